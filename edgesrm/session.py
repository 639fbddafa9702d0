"""A conversation kept across turns for the Python API: ``rt.chat_session()``.

Each ``send`` renders the whole conversation with the model's chat template (strategy ``plain``)
and appends the reply; the engine's prefix cache still holds the previous turn's prompt and reply,
so a turn prefills only the reply's re-rendering and the new message (``Result.cached_tokens``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import EdgesrmError

if TYPE_CHECKING:
    from .runtime import Runtime
    from .strategies import Result


class ChatSession:
    """A multi-turn conversation with one model. ``ask_kwargs`` (``max_tokens``, ``temperature``,
    ``budget``, ``on_text``, ``chat_template_kwargs``...) are passed to every ``Runtime.ask``;
    ``send`` takes more for one turn. Thread-safe as ``Runtime.ask`` is, but one conversation's
    turns are meant to be sent one after another."""

    def __init__(self, runtime: Runtime, system: str | None = None, **ask_kwargs: Any) -> None:
        if system is not None and not isinstance(system, str):
            raise EdgesrmError(f"system must be a str or None, got {type(system).__name__}")
        for name in ("messages", "question", "strategy"):
            if name in ask_kwargs:
                raise EdgesrmError(f"a chat session sets {name} itself")
        self.runtime = runtime
        self.system = system
        self.ask_kwargs = ask_kwargs
        self.messages: list[dict[str, str]] = []  # user and assistant turns, in order (without the system prompt)

    def send(self, text: str, **ask_kwargs: Any) -> Result:
        """Add the user's ``text``, get the model's reply (``Result.answer``; a thinking model's
        reasoning is in ``Result.reasoning`` and is not sent back to it in later turns, as chat
        templates do). A turn that raises leaves the conversation as it was."""
        if not isinstance(text, str) or not text.strip():
            raise EdgesrmError("a message must be non-empty text")
        conversation = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        result = self.runtime.ask(messages=conversation + [{"role": "user", "content": text}],
                                  **{**self.ask_kwargs, **ask_kwargs})
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": result.answer}]
        return result

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = []
