"""Where a checkpoint comes from: a local directory, or a Hugging Face repo id.

Repos are fetched with huggingface-hub into its standard cache (so a second conversion, or
any other tool, reuses the download), and only the files a conversion reads: config and
tokenizer files first, then exactly the weight shards the index lists (repos often also
carry .bin, .pth or consolidated copies of the same weights). ``HF_HUB_OFFLINE=1`` means the
cache only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import EdgesrmError
from ..hub import REPO_ID, HubSettings

METADATA_FILES = [
    "config.json", "generation_config.json", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json",
]


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold an object, as one clear error otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EdgesrmError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EdgesrmError(f"{path} is not {what} (not a JSON object)")
    return data


def resolve_source(src: str, revision: str | None = None) -> tuple[Path, str]:
    """A local directory holding the checkpoint, and a name for it."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EdgesrmError(f"{src} is a file; give the checkpoint's directory (with config.json) or a repo id")
        if revision is not None:
            raise EdgesrmError("--revision applies to Hugging Face repo ids, not to a local directory")
        return path, path.resolve().name
    if not REPO_ID.match(src):
        raise EdgesrmError(f"{src} is neither a directory nor a Hugging Face repo id (like HuggingFaceTB/SmolLM2-135M)")
    return download(src, revision), src


def offline() -> bool:
    return HubSettings.from_env().offline


def download(repo_id: str, revision: str | None) -> Path:
    """Fetch (or find in the cache) the files a conversion of ``repo_id`` needs."""
    directory = _snapshot(repo_id, revision, METADATA_FILES)
    if not (directory / "config.json").is_file():
        raise EdgesrmError(f"{repo_id} has no config.json: it is not a Transformers model repo")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EdgesrmError(f"{repo_id}: model.safetensors.index.json is corrupt") from None
    else:
        shards = ["model.safetensors"]
    # Pin the second call to the commit the first resolved, so files cannot come from two commits.
    return _snapshot(repo_id, directory.name, shards)


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    hub = HubSettings.from_env()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=hub.offline,
                                      endpoint=hub.endpoint, cache_dir=hub.cache_dir, token=hub.token))
    except GatedRepoError:
        raise EdgesrmError(f"{repo_id} is gated: accept its license on huggingface.co and log in "
                           "(`hf auth login` or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise EdgesrmError(f"{repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise EdgesrmError(f"Hugging Face repo {repo_id} not found (or private: log in with `hf auth login`)") from None
    except LocalEntryNotFoundError:
        if offline():
            raise EdgesrmError(f"{where} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set") from None
        raise EdgesrmError(f"could not download {where}: the Hugging Face Hub is unreachable "
                           "and the files are not cached") from None
    except Exception as exc:  # network and HTTP errors from requests/httpx
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgesrmError(f"could not download {where}: {first}") from None
