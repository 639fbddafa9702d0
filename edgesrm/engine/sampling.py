"""Sampling settings and the llama.cpp sampler chain built from them (one chain per sequence)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from ..checks import INT32_MAX, MAX_SEED, check_int, check_number, show
from ..errors import EdgesrmError
from .backend import lib

# Below MIN_TEMPERATURE, logits divided by the temperature overflow llama.cpp's float32 (sampling
# is then neither greedy nor random); above MAX_TEMPERATURE sampling is uniform already.
MIN_TEMPERATURE = 1e-6
MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its next token. ``temperature=0`` means greedy.

    The filters run in llama.cpp's usual order (top-k, top-p, min-p, then temperature);
    a value that disables a filter (``top_k=0``, ``top_p=1``, ``min_p=0``) leaves it out.
    """

    temperature: float = 0.6
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None

    def __post_init__(self) -> None:
        # Checked (and made plain int / float) before any of them reaches llama.cpp.
        temperature = self.temperature
        try:
            temperature = check_number("temperature", temperature, 0.0, MAX_TEMPERATURE)
            if 0.0 < temperature < MIN_TEMPERATURE:
                raise EdgesrmError("too low")
        except EdgesrmError:
            raise EdgesrmError(
                f"temperature must be 0 (greedy) or a number from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}, "
                f"got {show(temperature)}"
            ) from None
        set_field = object.__setattr__
        set_field(self, "temperature", temperature)
        set_field(self, "top_k", check_int("top_k", self.top_k, 0, INT32_MAX))
        set_field(self, "top_p", check_number("top_p", self.top_p, 0.0, 1.0, low_open=True))
        set_field(self, "min_p", check_number("min_p", self.min_p, 0.0, 1.0, high_open=True))
        set_field(self, "seed", check_int("seed", self.seed, 0, MAX_SEED, optional=True))

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
