"""The prefix cache: KV cells of finished prompts (and single replies) kept for the next prompt
that begins the same way.

Each entry is a llama.cpp sequence id whose cells hold ``tokens`` (positions 0..len-1). A new
prompt looks for the entry sharing its longest prefix, copies that prefix into its own sequence
with ``llama_memory_seq_cp`` (in the unified KV cache a copy shares the cells, it moves no data)
and prefills only the rest: turn k of a conversation costs its new tokens, a system prompt shared
by many users is read once. Entries go least recently used first, whenever a sequence id or KV
cells are needed. This is llama-server's ``cache_prompt`` widened from one prompt per slot to
every cached prompt (SGLang's RadixAttention keeps the same idea in a radix tree; a list is enough
for the few dozen entries an on-device server holds).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)  # compared by identity (it holds an array)
class CachedPrefix:
    seq_id: int
    tokens: np.ndarray  # int32, the tokens whose KV cells the sequence holds
    last_used: int = 0


@dataclass
class PrefixCache:
    entries: list[CachedPrefix] = field(default_factory=list)
    hits: int = 0  # prompts that reused cached cells
    misses: int = 0  # prompts that found nothing to reuse
    reused_tokens: int = 0  # prompt tokens not prefilled thanks to the cache, in all
    _clock: int = 0

    def longest(self, tokens: Seq[int]) -> tuple[CachedPrefix | None, int]:
        """The entry sharing the longest prefix with ``tokens`` and that prefix's length (tokens)."""
        query = np.asarray(tokens, dtype=np.int32)
        best, best_n = None, 0
        for entry in self.entries:
            n = min(len(entry.tokens), len(query))
            if n <= best_n:
                continue
            differ = np.flatnonzero(entry.tokens[:n] != query[:n])
            common = int(differ[0]) if differ.size else n
            if common > best_n:
                best, best_n = entry, common
        return best, best_n

    def use(self, entry: CachedPrefix, n: int) -> None:
        """Count a hit of ``n`` tokens on ``entry`` (it becomes the most recently used)."""
        self._clock += 1
        entry.last_used = self._clock
        self.hits += 1
        self.reused_tokens += n

    def put(self, seq_id: int, tokens: Seq[int]) -> list[int]:
        """Keep ``seq_id``'s cells for ``tokens``; returns the sequence ids of entries that are
        now redundant (a prefix of the new one), for the caller to free."""
        self._clock += 1
        new = CachedPrefix(seq_id, np.asarray(tokens, dtype=np.int32), self._clock)
        redundant = [e for e in self.entries
                     if len(e.tokens) <= len(new.tokens) and np.array_equal(e.tokens, new.tokens[: len(e.tokens)])]
        self.entries = [e for e in self.entries if e not in redundant] + [new]
        return [e.seq_id for e in redundant]

    def pop_lru(self) -> int | None:
        """Forget the least recently used entry; its sequence id (``None``: the cache is empty)."""
        if not self.entries:
            return None
        oldest = min(self.entries, key=lambda e: e.last_used)
        self.entries.remove(oldest)
        return oldest.seq_id

    @property
    def tokens(self) -> int:
        """Tokens held in all entries (shared cells counted once per entry)."""
        return sum(len(e.tokens) for e in self.entries)
