"""Sampling settings and the llama.cpp sampler chain built from them (one chain per sequence)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from ..errors import EdgesrmError
from .backend import lib


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its next token. ``temperature <= 0`` means greedy.

    The filters run in llama.cpp's usual order (top-k, top-p, min-p, then temperature);
    a value that disables a filter (``top_k=0``, ``top_p=1``, ``min_p=0``) leaves it out.
    """

    temperature: float = 0.6
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise EdgesrmError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise EdgesrmError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise EdgesrmError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.seed is not None and not 0 <= self.seed < 2**32 - 1:
            raise EdgesrmError(f"seed must be in [0, 2**32 - 1), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def with_seed(self, seed: int | None) -> "SamplingParams":
        return replace(self, seed=seed)


GREEDY = SamplingParams(temperature=0.0)


def make_chain(params: SamplingParams):
    """Build a sampler chain; the caller owns it and frees it with ``free_chain``."""
    llama = lib()
    chain_params = llama.llama_sampler_chain_default_params()
    chain_params.no_perf = True
    chain = llama.llama_sampler_chain_init(chain_params)
    add = llama.llama_sampler_chain_add
    if params.greedy:
        add(chain, llama.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(chain, llama.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(chain, llama.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(chain, llama.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, llama.llama_sampler_init_temp(params.temperature))
    seed = params.seed if params.seed is not None else random.randrange(2**32 - 1)
    add(chain, llama.llama_sampler_init_dist(seed))
    return chain


def free_chain(chain) -> None:
    lib().llama_sampler_free(chain)
