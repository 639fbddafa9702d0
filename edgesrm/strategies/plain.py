"""plain: the user's messages go to the model untouched and its whole reply comes back.

No instruction is added and no answer format is asked for: this is what a chat front end or an
app wants for a haiku, a summary or a conversation. Thinking models still think first, and their
``<think>`` block is the result's ``reasoning`` (their reply after ``</think>`` is the answer,
with the answer's steps kept from the token cap and the deadline as in every strategy).
"""

from __future__ import annotations

from .base import PathRunner, Result, Task, single_path


def run(task: Task) -> Result:
    gen = task.start(task.chat.prompt(task.conversation(), **task.template_kwargs))
    return single_path(task, gen, PathRunner(task, gen, whole_reply=True), "plain")
