"""How edgesrm reaches the Hugging Face Hub: huggingface-hub's settings, read when used.

huggingface-hub reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and its cache paths once, when it is
imported; edgesrm reads them when a download starts and passes them explicitly, so that the
environment of the moment counts (and tests can point a process at a Hub stand-in).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class HubSettings:
    """huggingface-hub's settings (``from_env()``: read from the environment now)."""

    endpoint: str
    cache_dir: Path
    token: str | None
    offline: bool

    @classmethod
    def from_env(cls) -> HubSettings:
        env = os.environ
        endpoint = (env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        home = Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
        cache = Path(env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or home / "hub").expanduser().absolute()
        offline = env.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
        return cls(endpoint, cache, env.get("HF_TOKEN") or None, offline)
