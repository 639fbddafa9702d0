"""plain: the user's messages go to the model untouched and its whole reply comes back.

No instruction is added and no answer format is asked for: this is what a chat front end or an
app wants for a haiku, a summary or a conversation. Thinking models still think first, and their
``<think>`` block is the result's ``reasoning`` (their reply after ``</think>`` is the answer,
with the answer's steps kept from the token cap and the deadline as in every strategy).
"""

from __future__ import annotations

from .base import _CUT_REASONS, PathRunner, Result, Task, single_path


def run(task: Task) -> Result:
    gen = task.start(task.chat.prompt(task.conversation(), **task.template_kwargs))
    result = single_path(task, gen, PathRunner(task, gen, whole_reply=True), "plain")
    path = result.paths[0]
    if not path.answer_complete and not task.thinking:  # a reply, not an answer to read a number from
        result.notes = [n for n in result.notes if "cut off" not in n and "no path finished" not in n]
        result.notes.append(f"the reply was cut off by {_CUT_REASONS.get(path.finish_reason, path.finish_reason)} before it ended")
    return result
