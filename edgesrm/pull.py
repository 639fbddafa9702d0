"""``edgesrm pull``: fetch a model once, check it, and name it in the local store.

What a reference can be:

- ``user/repo[:QUANT]``, a GGUF repo on the Hugging Face Hub: the file(s) of that quant
  (case-insensitive; default Q4_K_M, else the smallest file of at least 4 bits, as llama.cpp's
  ``-hf`` does); a split model (``-00001-of-0000N.gguf``) is fetched whole.
- ``user/repo`` holding a Transformers checkpoint (config.json + safetensors): downloaded (only
  what the converter reads), converted and quantized (``quant``, default Q4_K_M) into the store.
- a short name from ``edgesrm/data/models.json`` (``qwen3-0.6b``...): its usual GGUF repo.
- a local ``.gguf`` file: registered where it is, or copied into the store (``copy=True``).

Downloads go through huggingface-hub (``hf_hub_download`` into its standard cache, honouring
``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE``; these are read
when ``pull`` runs, not when huggingface-hub was imported). Before: the free disk is checked.
After: the size and the Hub's sha256 (the LFS oid, which huggingface-hub 2.x does not check
itself) are verified, and the file is read by edgesrm's GGUF header reader; a file that fails is
deleted and nothing is registered. The hash is computed while the file downloads (a thread reads
huggingface-hub's growing temporary file), so verifying a 1 GB file adds little wall time.

Resuming: huggingface-hub resumes a dropped connection within the download (a Range request
from the last whole 10 MiB it wrote). A download that is killed or reset starts over on the next
pull: huggingface-hub 2.x keeps no partial file between runs (one temporary file per process).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import EdgesrmError
from .hub import REPO_ID, HubSettings
from .models import check_complete, check_gguf, file_quantization, read_header
from .store import ModelStore, StoreEntry, check_name, file_name

log = logging.getLogger(__name__)

DEFAULT_QUANT = "Q4_K_M"
SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# A quant in a file name: Q4_K_M, Q8_0, IQ4_XS, Q4_0_4_4, BF16, F16, F32, TQ1_0, MXFP4...
QUANT_IN_NAME = re.compile(r"(?<![A-Z0-9])(I?Q\d(?:_[A-Z0-9]{1,2})*|BF16|F16|F32|TQ\d_\d|MXFP4(?:_MOE)?)(?![A-Z0-9])")
UNKNOWN = "unknown"  # a GGUF whose file name names no quant
DISK_MARGIN = 64 << 20  # bytes kept free beyond what a download needs
ATTEMPTS = 3  # downloads tried before giving up (huggingface-hub also retries within one)


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repo
    size: int | None
    sha256: str | None  # LFS files only


def known_models() -> dict[str, dict]:
    """Short names of well-known small reasoning models -> their usual GGUF repo (data, not code)."""
    text = resources.files("edgesrm").joinpath("data/models.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def quant_of(filename: str) -> str | None:
    """The quant named in a GGUF file name (``Qwen3-0.6B-Q4_K_M.gguf`` -> ``Q4_K_M``)."""
    found = QUANT_IN_NAME.findall(Path(filename).name.upper()) or QUANT_IN_NAME.findall(filename.upper())
    return found[-1] if found else None


def _bits(quant: str) -> float:
    if quant in ("F16", "BF16"):
        return 16
    if quant == "F32":
        return 32
    if quant.startswith("MXFP4"):
        return 4
    if quant.startswith("TQ"):
        return 2
    digits = re.search(r"\d+", quant)
    return float(digits.group()) if digits else 0


def group_gguf_files(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """GGUF files by quant (upper case), a split model's parts together and in order; vision
    projectors (mmproj) left out. A quant with several candidates keeps the smallest."""
    models: dict[str, list[RemoteFile]] = {}
    for f in files:
        name = Path(f.path).name.lower()
        if not name.endswith(".gguf") or "mmproj" in name:
            continue
        split = SPLIT.search(f.path)
        key = SPLIT.sub("", f.path) if split else f.path
        if split and int(split.group(1)) != 1:
            continue
        parts = [f]
        if split:
            total = int(split.group(2))
            by_name = {g.path: g for g in files}
            parts = [by_name.get(f"{key}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]
            if any(p is None for p in parts):
                continue  # an incomplete split set is not offered
        quant = quant_of(f.path) or UNKNOWN
        size = sum(p.size or 0 for p in parts)
        old = models.get(quant)
        if old is None or size < sum(p.size or 0 for p in old):
            models[quant] = parts
    return models


def choose_quant(models: dict[str, list[RemoteFile]], quant: str | None, repo: str) -> str:
    """The quant to fetch: ``quant`` if the repo has it, else Q4_K_M, else the smallest of >= 4 bits."""
    available = ", ".join(sorted(models)) or "none"
    if quant is not None:
        if quant.upper() not in models:
            raise EdgesrmError(f"{repo} has no {quant} GGUF; it has: {available}")
        return quant.upper()
    if DEFAULT_QUANT in models:
        return DEFAULT_QUANT
    ok = [q for q in models if _bits(q) >= 4]
    if not ok and list(models) == [UNKNOWN]:  # one GGUF whose name says no quant: the repo's model
        return UNKNOWN
    if not ok:
        raise EdgesrmError(f"{repo} has no GGUF of 4 bits or more ({available}); name one: {repo}:QUANT")
    return min(ok, key=lambda q: sum(p.size or 0 for p in models[q]))


def default_name(repo: str, quant: str | None) -> str:
    """``qwen3-0.6b:q4_k_m`` from ``unsloth/Qwen3-0.6B-GGUF`` and Q4_K_M: ASCII, valid as a store name."""
    import unicodedata

    base = re.sub(r"[-_.]gguf$", "", repo.split("/")[-1], flags=re.IGNORECASE)
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode().lower()
    base = re.sub(r"[^a-z0-9_.\-]+", "-", base)
    base = re.sub(r"^[^a-z0-9]+|[-_.]+$", "", base)[:100] or "model"
    return f"{base}:{(quant or 'gguf').lower()}"


def pull(ref: str, *, name: str | None = None, quant: str | None = None, revision: str | None = None,
         copy: bool = False, store: ModelStore | None = None, progress: bool | None = None) -> StoreEntry:
    """Fetch ``ref`` (see the module's docstring) into the store and return its entry.

    ``progress``: huggingface-hub's progress bars (bytes, rate) on stderr; default when stderr is
    a terminal. Raises ``EdgesrmError`` for every problem, with nothing registered and no file of
    edgesrm's left half-written.
    """
    store = store or ModelStore()
    if name is not None:
        check_name(name)
    path = Path(ref).expanduser()
    if path.exists() or ref.lower().endswith(".gguf"):
        if quant is not None or revision is not None:
            raise EdgesrmError("--quant and --revision apply to Hub repos, not to a local file")
        return _register_local(path, name, copy, store)
    if copy:
        raise EdgesrmError("--copy applies to a local file; Hub downloads live in the Hugging Face cache")
    repo, _, tag = ref.partition(":")
    if not repo:
        raise EdgesrmError(f"{ref!r} names no model: give user/repo[:QUANT], a known name or a .gguf file")
    if tag and quant and tag.upper() != quant.upper():
        raise EdgesrmError(f"two quants asked for: {ref!r} and --quant {quant}")
    quant = tag or quant
    known = known_models().get(repo.lower())
    if known is not None:
        repo = known["repo"]
    elif "/" not in repo:
        close = [k for k in known_models() if repo.lower() in k or k in repo.lower()]
        hint = f" (known names: {', '.join(close)})" if close else " (see `edgesrm pull --help` for known names)"
        raise EdgesrmError(f"{ref!r} is neither a local .gguf file, a Hugging Face repo id (user/repo) nor a "
                           f"known model name{hint}")
    if not REPO_ID.match(repo):
        raise EdgesrmError(f"{repo!r} is not a Hugging Face repo id (like unsloth/Qwen3-0.6B-GGUF)")
    settings = HubSettings.from_env()
    progress = sys.stderr.isatty() if progress is None else progress
    _progress_bars(progress)
    if settings.offline:
        return _pull_cached(repo, quant, revision, name, settings, store)
    commit, files, license_ = _list_repo(repo, revision, settings)
    models = group_gguf_files(files)
    if not models:
        paths = {f.path for f in files}
        if "config.json" in paths and any(p.endswith(".safetensors") for p in paths):
            return _pull_checkpoint(repo, commit, quant, name, license_, store, progress)
        ggufs = [p for p in paths if p.lower().endswith(".gguf")]
        if ggufs:
            raise EdgesrmError(f"{repo} has GGUF files but no model edgesrm can run: only vision projectors "
                               "(mmproj) or split models with parts missing")
        raise EdgesrmError(f"{repo} has neither GGUF files nor a safetensors checkpoint (config.json + "
                           "*.safetensors): nothing edgesrm can run")
    chosen = choose_quant(models, quant, repo)
    name = name or _default_name_checked(repo, chosen)
    _check_name_free(store, name, repo, chosen)
    parts = models[chosen]
    _check_disk(settings, repo, parts)
    paths, owned = [], True
    for part in parts:
        local, fresh = _download(repo, commit, part, settings)
        paths.append(local)
        owned = owned and fresh
    try:
        for p in paths:
            check_complete(p, read_header(p))
    except EdgesrmError as exc:
        _discard(paths, owned)
        gone = "it was deleted" if owned else "it was in the Hugging Face cache before this pull and is left there"
        raise EdgesrmError(f"{repo}: the downloaded file is not a usable GGUF ({exc}); {gone}") from None
    entry = StoreEntry(name=name, path=str(paths[0]), size=sum(p.stat().st_size for p in paths),
                       source=f"hf://{repo}", quant=None if chosen == UNKNOWN else chosen, repo=repo,
                       revision=commit, files=[str(p) for p in paths], sha256=parts[0].sha256, license=license_,
                       owned=owned)
    return store.add(entry, replace=True)


# -- the Hub ---------------------------------------------------------------------------------


def _progress_bars(on: bool) -> None:
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if on else disable_progress_bars)()


def _hub_error(exc: Exception, repo: str, revision: str | None, settings: HubSettings) -> EdgesrmError:
    """One sentence for what huggingface-hub raised."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return EdgesrmError(f"{repo} is gated: accept its license on the Hub and log in (`hf auth login` or HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return EdgesrmError(f"{repo} has no revision {revision!r}")
    if isinstance(exc, RepositoryNotFoundError):
        return EdgesrmError(f"Hugging Face repo {repo} not found (or private: log in with `hf auth login` or HF_TOKEN)")
    if isinstance(exc, EntryNotFoundError):
        return EdgesrmError(f"{repo}: {exc}".splitlines()[0])
    if isinstance(exc, LocalEntryNotFoundError) or not isinstance(exc, HfHubHTTPError):
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return EdgesrmError(f"cannot reach the Hugging Face Hub at {settings.endpoint} ({reason[:200]}); check the "
                            "network, or set HF_HUB_OFFLINE=1 to use what is already downloaded")
    return EdgesrmError(f"the Hugging Face Hub refused {repo}: {str(exc).splitlines()[0][:200]}")


def _list_repo(repo: str, revision: str | None, settings: HubSettings) -> tuple[str, list[RemoteFile], str | None]:
    """The commit ``revision`` resolves to, the repo's files (sizes, LFS sha256) and its license."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=settings.endpoint, token=settings.token).model_info(
            repo, revision=revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one sentence
        raise _hub_error(exc, repo, revision, settings) from None
    files = [RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []]
    license_ = (info.card_data or {}).get("license") if info.card_data else None
    if license_ is None:
        license_ = next((t.split(":", 1)[1] for t in info.tags or [] if t.startswith("license:")), None)
    return info.sha, files, license_ if isinstance(license_, str) else None


def _check_disk(settings: HubSettings, repo: str, parts: list[RemoteFile]) -> None:
    from huggingface_hub import try_to_load_from_cache

    need = 0
    for part in parts:
        cached = try_to_load_from_cache(repo, part.path, cache_dir=settings.cache_dir)
        if not isinstance(cached, str):
            need += part.size or 0
    free_space(settings.cache_dir, need, f"{repo}'s {len(parts)} file{'s' if len(parts) > 1 else ''}")


def free_space(directory: Path, need: int, what: str) -> None:
    """Raise unless ``directory`` (or its nearest existing parent) has ``need`` bytes free and a margin."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise EdgesrmError(f"cannot write {what} into {directory}: {probe} is not a writable directory")
    if need == 0:
        return
    free = shutil.disk_usage(probe).free
    if need + DISK_MARGIN > free:
        raise EdgesrmError(f"not enough disk space for {what}: {need / 2**30:.2f} GiB needed, "
                           f"{free / 2**30:.2f} GiB free in {probe}; free some space or set HF_HUB_CACHE to "
                           "another disk")


def _download(repo: str, commit: str, part: RemoteFile, settings: HubSettings) -> tuple[Path, bool]:
    """Download one file (or find it in the cache) and verify it; returns its path and whether
    this call downloaded it."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name

    blobs = settings.cache_dir / repo_folder_name(repo_id=repo, repo_type="model") / "blobs"
    fresh = not isinstance(try_to_load_from_cache(repo, part.path, cache_dir=settings.cache_dir, revision=commit), str)
    for attempt in range(1, ATTEMPTS + 1):
        hasher = _GrowingFileHasher(blobs, part.sha256) if fresh and part.sha256 else None
        try:
            local = Path(hf_hub_download(repo, part.path, revision=commit, cache_dir=settings.cache_dir,
                                         endpoint=settings.endpoint, token=settings.token))
            break
        except OSError as exc:
            advice = ("free some space or set HF_HUB_CACHE to another disk" if exc.errno == errno.ENOSPC
                      else "set HF_HUB_CACHE to a writable directory")
            raise EdgesrmError(f"cannot write {part.path} into the Hugging Face cache {settings.cache_dir} "
                               f"({exc.strerror or exc}); {advice}; nothing was registered") from None
        except Exception as exc:  # noqa: BLE001
            from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

            if isinstance(exc, (HfHubHTTPError, LocalEntryNotFoundError)) or attempt == ATTEMPTS:
                raise _hub_error(exc, repo, commit, settings) from None
            log.info("download of %s interrupted (%s); trying again (%d of %d)", part.path,
                     type(exc).__name__, attempt + 1, ATTEMPTS)
            time.sleep(1)
        finally:
            if hasher is not None:
                hasher.stop()
    _verify(local, part, hasher.digest(local) if hasher else None, fresh, repo)
    return local, fresh


def _verify(local: Path, part: RemoteFile, digest: str | None, fresh: bool, repo: str) -> None:
    size = local.stat().st_size
    problem = None
    if part.size is not None and size != part.size:
        problem = f"it has {size:,} bytes, the Hub says {part.size:,}"
    elif part.sha256:
        digest = digest or sha256_file(local)
        if digest != part.sha256:
            problem = f"its sha256 is {digest}, the Hub says {part.sha256}"
    if problem:
        _discard([local], True)
        raise EdgesrmError(f"{repo}/{part.path} failed verification ({problem}): a damaged download; it was "
                           "deleted and nothing was registered; pull again")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _GrowingFileHasher:
    """Hashes huggingface-hub's temporary file (``blobs/<sha256>.<random>.incomplete``) while it
    is written, on a second core, so that the check after the download costs little.

    The file only grows (huggingface-hub appends, resuming at a chunk boundary it has written),
    and the open descriptor keeps reading it after its rename to the blob. Anything unusual
    (no temporary file seen, a size that does not add up) makes ``digest`` return None, and
    the caller hashes the finished file instead.
    """

    def __init__(self, blobs: Path, sha256: str) -> None:
        self._pattern, self._blobs = f"{sha256}.*.incomplete", blobs
        self._before = set(blobs.glob(self._pattern)) if blobs.is_dir() else set()
        self._done = threading.Event()
        self._hash = hashlib.sha256()
        self._read = 0
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="edgesrm-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            f = None
            while f is None:
                new = set(self._blobs.glob(self._pattern)) - self._before if self._blobs.is_dir() else set()
                if new:
                    f = open(new.pop(), "rb")
                elif self._done.wait(0.02):
                    self._failed = True
                    return
            with f:
                while True:
                    chunk = f.read(8 << 20)
                    if chunk:
                        self._hash.update(chunk)
                        self._read += len(chunk)
                    elif self._done.is_set():
                        chunk = f.read()  # written between the last read and the end
                        self._hash.update(chunk)
                        self._read += len(chunk)
                        return
                    elif os.fstat(f.fileno()).st_size < self._read:  # rewritten from the start
                        self._failed = True
                        return
                    else:
                        time.sleep(0.01)
        except OSError:
            self._failed = True

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def digest(self, final: Path) -> str | None:
        if self._failed or self._read != final.stat().st_size:
            return None
        return self._hash.hexdigest()


def _discard(paths: list[Path], owned: bool) -> None:
    """Delete downloaded files (the cache's snapshot link and its blob) that failed a check."""
    if not owned:
        return
    for p in paths:
        real = Path(os.path.realpath(p))
        if p.is_symlink():
            p.unlink(missing_ok=True)
        real.unlink(missing_ok=True)


def _default_name_checked(source: str, quant: str | None) -> str:
    name = default_name(source, None if quant == UNKNOWN else quant)
    try:
        check_name(name)
    except EdgesrmError:
        raise EdgesrmError(f"cannot make a store name from {source!r}; give one with name=",
                           cli=f"cannot make a store name from {source!r}; give one with --name") from None
    return name


def _own_file(store: ModelStore, name: str) -> Path:
    """A new file in the store's models directory for the model edgesrm makes for ``name``."""
    try:
        store.models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgesrmError(f"cannot create {store.models_dir} ({exc.strerror or exc}); set EDGESRM_HOME to a "
                           "writable directory") from None
    return store.models_dir / file_name(name)


def _check_name_free(store: ModelStore, name: str, repo: str | None, quant: str | None) -> None:
    """A name already used for another model is refused before any download; pulling the same
    repo and quant again updates its entry."""
    old = next((e for e in store.entries() if e.name.lower() == name.lower()), None)
    if old is not None and not (old.repo == repo and old.quant == quant and repo is not None):
        raise EdgesrmError(f"the store already has a model called {name!r} (from {old.source}); choose another "
                           f"name or remove it first", cli=f"the store already has a model called {name!r} (from "
                           f"{old.source}); choose another --name or `edgesrm rm {name}` first")


# -- offline, checkpoints, local files ---------------------------------------------------------


def _pull_cached(repo: str, quant: str | None, revision: str | None, name: str | None,
                 settings: HubSettings, store: ModelStore) -> StoreEntry:
    """HF_HUB_OFFLINE: the GGUF files of ``repo`` already in the Hugging Face cache."""
    from huggingface_hub.file_download import repo_folder_name

    root = settings.cache_dir / repo_folder_name(repo_id=repo, repo_type="model")
    ref = root / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    if (revision is None or not re.fullmatch(r"[0-9a-f]{40}", revision)) and not ref.is_file() \
            and (root / "snapshots").is_dir():
        # Files fetched by commit (as pull does) leave no refs/main: the newest snapshot with a GGUF.
        found = sorted((p for p in (root / "snapshots").iterdir() if any(p.rglob("*.gguf"))),
                       key=lambda p: p.stat().st_mtime)
        commit = found[-1].name if found else None
    snapshot = root / "snapshots" / (commit or "")
    if not commit or not snapshot.is_dir():
        raise EdgesrmError(f"{repo}{f' at {revision}' if revision else ''} is not in the Hugging Face cache "
                           f"({settings.cache_dir}) and HF_HUB_OFFLINE is set: unset it to download")
    files = []
    for p in sorted(snapshot.rglob("*.gguf")):
        real = Path(os.path.realpath(p))
        sha = real.name if re.fullmatch(r"[0-9a-f]{64}", real.name) else None
        files.append(RemoteFile(p.relative_to(snapshot).as_posix(), real.stat().st_size, sha))
    models = group_gguf_files(files)
    if not models:
        raise EdgesrmError(f"the Hugging Face cache has no GGUF file of {repo} (HF_HUB_OFFLINE is set)")
    chosen = choose_quant(models, quant, f"{repo} (in the offline cache)")
    name = name or _default_name_checked(repo, chosen)
    _check_name_free(store, name, repo, chosen)
    paths = [snapshot / part.path for part in models[chosen]]
    for part, p in zip(models[chosen], paths):
        _verify(p, part, None, False, repo)
        check_complete(p, read_header(p))
    entry = StoreEntry(name=name, path=str(paths[0]), size=sum(p.stat().st_size for p in paths),
                       source=f"hf://{repo}", quant=None if chosen == UNKNOWN else chosen, repo=repo,
                       revision=commit, files=[str(p) for p in paths], sha256=models[chosen][0].sha256, owned=False)
    return store.add(entry, replace=True)


def _pull_checkpoint(repo: str, commit: str, quant: str | None, name: str | None, license_: str | None,
                     store: ModelStore, progress: bool) -> StoreEntry:
    """A Transformers checkpoint: downloaded, converted and quantized into the store."""
    from .convert import QUANT_TYPES, convert

    quant = (quant or DEFAULT_QUANT).upper()
    if quant not in QUANT_TYPES:
        raise EdgesrmError(f"edgesrm quantizes to {', '.join(QUANT_TYPES)}, not {quant}")
    name = name or _default_name_checked(repo, quant)
    _check_name_free(store, name, repo, quant)
    out = _own_file(store, name)
    log.info("%s is a Transformers checkpoint: converting it to GGUF %s", repo, quant)
    try:
        convert(repo, out, quant=quant, revision=commit, progress=progress)
        entry = StoreEntry(name=name, path=str(out), size=out.stat().st_size, source=f"hf://{repo} (converted)",
                           quant=quant, repo=repo, revision=commit, files=[str(out)], sha256=sha256_file(out),
                           license=license_, owned=True)
        return store.add(entry, replace=True)
    except BaseException:  # never registered: not left behind
        out.unlink(missing_ok=True)
        raise


def _register_local(path: Path, name: str | None, copy: bool, store: ModelStore) -> StoreEntry:
    check_gguf(path)
    header = read_header(path)
    check_complete(path, header)
    if name is None:
        quant = quant_of(path.name)
        stem = re.sub(rf"[-_.]?{re.escape(quant)}(?=$|[-_.])", "", path.stem, flags=re.IGNORECASE) if quant else path.stem
        name = _default_name_checked(stem or path.stem, quant)
    old = next((e for e in store.entries() if e.name == name), None)
    if old is not None and (copy or os.path.realpath(old.path) != str(path.resolve())):
        _check_name_free(store, name, None, None)
    source_path = path.resolve()
    if copy:
        out = _own_file(store, name)
        free_space(store.models_dir, path.stat().st_size, f"a copy of {path}")
        tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, out)
        except OSError as exc:
            raise EdgesrmError(f"cannot copy {path} into {store.models_dir} ({exc.strerror or exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
        source_path = out
    meta = header.metadata
    entry = StoreEntry(name=name, path=str(source_path), size=source_path.stat().st_size, source="file",
                       quant=file_quantization(header), files=[str(source_path)], sha256=None,
                       license=meta.get("general.license") if isinstance(meta.get("general.license"), str) else None,
                       owned=copy)
    try:
        return store.add(entry, replace=old is not None)
    except BaseException:
        if copy:
            source_path.unlink(missing_ok=True)
        raise
