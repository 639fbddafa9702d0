"""Turning token bytes into text safely while streaming.

A token can end in the middle of a multi-byte UTF-8 character, and a stop string can arrive
split over several tokens; both mean some text must be held back until the next token.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with what cannot be UTF-8 replaced by U+FFFD.

    Bytes that were not UTF-8 reach Python as lone surrogates (standard input and command
    lines decode them with ``surrogateescape``; JSON may hold ``"\\ud800"``): the undecodable
    bytes become U+FFFD, as a UTF-8 decoder with ``errors="replace"`` would make them.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # surrogates that did not come from bytes
        return _SURROGATE_RE.sub("\ufffd", text)


class Utf8Stream:
    """Bytes in, complete characters out: never splits a multi-byte UTF-8 character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)

    def getstate(self) -> tuple[bytes, int]:
        return self._decoder.getstate()

    def setstate(self, state: tuple[bytes, int]) -> None:
        self._decoder.setstate(state)


class StopScanner:
    """Finds stop strings in growing text and says how much of it is safe to emit.

    Text that could be the start of a stop string is held back, so a stream never shows
    part of a stop string that is then cut.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)

    def find(self, text: str, start: int) -> tuple[int, str | None]:
        """The earliest stop string that ends after ``start``: (index, string), or (-1, None)."""
        best: tuple[int, str | None] = (-1, None)
        if not self.stops:
            return best
        longest = max(len(s) for s in self.stops)
        begin = max(0, start - longest + 1)
        for stop in self.stops:
            i = text.find(stop, begin)
            if i >= 0 and (best[0] < 0 or i < best[0]):
                best = (i, stop)
        return best

    def safe_end(self, text: str) -> int:
        """Length of the prefix of ``text`` that cannot grow into a stop string."""
        for k in range(min(len(text), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return len(text) - k
        return len(text)
