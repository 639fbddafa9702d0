"""The local model store: a small index of the models on this machine, by name.

``edgesrm pull`` adds to it, ``edgesrm list``/``show``/``rm`` read and change it, and every
``--model`` option takes a store name as well as a path (``edgesrm.models.resolve_model``).

Where things live (``store_home()``): ``$EDGESRM_HOME``, else the platform's data directory
(``~/.local/share/edgesrm`` on Linux, ``~/Library/Application Support/edgesrm`` on macOS,
``%LOCALAPPDATA%\\edgesrm`` on Windows; found with platformdirs, the library pip and tox use):

- ``index.json``: one entry per name (``StoreEntry``), rewritten whole and atomically under a
  file lock (filelock, which huggingface-hub already depends on), so two pulls at once cannot
  lose each other's entry and a crash never leaves half an index.
- ``models/``: the GGUF files edgesrm made (a checkpoint converted on pull, a copied file).

Files pulled from the Hub stay in Hugging Face's standard cache, where other tools find them
too; the index points at them. ``rm`` deletes only what edgesrm created (``owned``): never a
user's own file, and never a cached file another entry still uses.
"""

from __future__ import annotations

import difflib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import EdgesrmError

HOME_ENV = "EDGESRM_HOME"
INDEX_VERSION = 1


def store_home() -> Path:
    """The store's directory (not created here)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().absolute()  # the index holds absolute paths
    import platformdirs

    return Path(platformdirs.user_data_dir("edgesrm", appauthor=False)).absolute()


@dataclass
class StoreEntry:
    """One model in the store.

    ``path`` is the file to load (a split model's first part); ``files`` all its files.
    ``size`` is bytes, all files together; ``sha256`` the first file's (Hub: its LFS oid).
    ``source`` says where it came from: ``hf://REPO`` (a GGUF repo), ``hf://REPO (converted)``,
    or ``file`` (a local file registered or copied). ``owned``: edgesrm created the files, so
    ``rm`` may delete them.
    """

    name: str
    path: str
    size: int
    source: str
    quant: str | None = None
    repo: str | None = None
    revision: str | None = None
    files: list[str] = field(default_factory=list)
    sha256: str | None = None
    license: str | None = None
    added: str = ""
    owned: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StoreEntry:
        """An entry from the index; ``ValueError`` when a field has the wrong type."""
        if not isinstance(data, dict):
            raise ValueError("an entry is not an object")
        known = {f.name for f in fields(cls)}
        entry = cls(**{k: v for k, v in data.items() if k in known})
        text = (entry.name, entry.path, entry.source)
        optional = (entry.quant, entry.repo, entry.revision, entry.sha256, entry.license)
        if (not all(isinstance(v, str) for v in text) or not all(v is None or isinstance(v, str) for v in optional)
                or not isinstance(entry.size, int) or isinstance(entry.size, bool) or not isinstance(entry.owned, bool)
                or not isinstance(entry.added, str) or not isinstance(entry.files, list)
                or not all(isinstance(f, str) for f in entry.files)):
            raise ValueError(f"entry {data.get('name')!r} has a field of the wrong type")
        return entry

    @property
    def missing(self) -> bool:
        """The file is no longer where the store says."""
        return not os.path.isfile(self.path)


class ModelStore:
    """The index at ``home/index.json``. Reads never lock; changes hold ``index.lock``."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = store_home() if home is None else Path(home)
        self.index_path = self.home / "index.json"
        self.models_dir = self.home / "models"

    # -- reading -------------------------------------------------------------------------------

    def entries(self) -> list[StoreEntry]:
        """Every entry, by name."""
        if not self.index_path.is_file():
            return []
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
            models = data["models"]
            if not isinstance(models, list):
                raise ValueError("'models' is not a list")
            return sorted((StoreEntry.from_dict(m) for m in models), key=lambda e: e.name)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EdgesrmError(f"the model store's index {self.index_path} is unreadable ({exc}); "
                               f"move it away and pull the models again") from None

    def get(self, name: str) -> StoreEntry | None:
        """The entry called ``name`` (case aside), or the only one whose name without ``:tag`` is
        ``name``, or the only one pulled from the Hub reference ``name`` (``user/repo[:QUANT]``)."""
        entries = self.entries()
        for match in (lambda e: e.name == name, lambda e: e.name.lower() == name.lower()):
            found = [e for e in entries if match(e)]
            if len(found) == 1:
                return found[0]
        if ":" not in name:
            tagged = [e for e in entries if e.name.split(":", 1)[0].lower() == name.lower()]
        else:
            tagged = []
        if "/" in name:  # the reference the model was pulled by
            repo, _, quant = name.partition(":")
            tagged = [e for e in entries if (e.repo or "").lower() == repo.lower()
                      and (not quant or (e.quant or "").lower() == quant.lower())]
        if len(tagged) == 1:
            return tagged[0]
        if tagged:
            raise EdgesrmError(f"{name!r} names several models in the store: "
                               f"{', '.join(e.name for e in tagged)}; give the whole name")
        return None

    def require(self, name: str) -> StoreEntry:
        """``get(name)``, or an error that lists close names."""
        entry = self.get(name)
        if entry is None:
            raise EdgesrmError(self.not_found(name))
        return entry

    def not_found(self, name: str) -> str:
        names = [e.name for e in self.entries()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        close += [n for n in names if name.lower() in n.lower() and n not in close][: 3 - len(close)]
        if close:
            hint = f"did you mean {', '.join(close)}?"
        elif names:
            hint = f"the store has {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
        else:
            hint = "the store is empty: fetch a model with `edgesrm pull`"
        return f"no model called {name!r} in the store ({self.home}); {hint}"

    # -- changing ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[list[StoreEntry]]:
        """The entries, under the lock; what the block leaves in the list is written back."""
        from filelock import FileLock, Timeout

        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgesrmError(f"cannot create the model store {self.home} ({exc.strerror}); "
                               f"set {HOME_ENV} to a writable directory") from None
        lock = FileLock(str(self.home / "index.lock"), timeout=30)
        try:
            lock.acquire()
        except Timeout:
            raise EdgesrmError(f"the model store {self.home} is busy: another edgesrm has been changing it for "
                               "30 s; try again when it is done") from None
        except OSError as exc:
            raise EdgesrmError(f"cannot change the model store {self.home} ({exc.strerror or exc}); set "
                               f"{HOME_ENV} to a writable directory") from None
        try:
            entries = self.entries()
            yield entries
            payload = {"version": INDEX_VERSION, "models": [e.to_dict() for e in entries]}
            tmp = self.index_path.with_name(f".index.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
                os.replace(tmp, self.index_path)
            except OSError as exc:
                raise EdgesrmError(f"cannot write the model store's index {self.index_path} "
                                   f"({exc.strerror or exc})") from None
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            lock.release()

    def add(self, entry: StoreEntry, *, replace: bool = False) -> StoreEntry:
        """Record ``entry``. A name already taken is an error, unless the old entry names the
        same file, or ``replace`` and it came from the same source (a newer pull of the same repo
        and quant): then the old entry's files that edgesrm created and nothing else uses are
        deleted. The check runs under the lock, so of two pulls racing for one name one fails."""
        check_name(entry.name)
        entry.added = entry.added or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._locked() as entries:
            old = next((e for e in entries if e.name.lower() == entry.name.lower()), None)
            if old is not None:
                same_file = _same_model(old, entry)
                same_source = (old.source, old.repo, old.quant) == (entry.source, entry.repo, entry.quant)
                if not same_file and not (replace and same_source):
                    raise EdgesrmError(f"the store already has a model called {old.name!r} ({old.path}); "
                                       "choose another name or remove it first",
                                       cli=f"the store already has a model called {old.name!r} ({old.path}); "
                                           f"choose another --name or `edgesrm rm {old.name}` first")
                entries.remove(old)
                if same_file:  # pulled again: what edgesrm created stays its own
                    entry.owned = entry.owned or old.owned
                else:
                    _release(old, entries + [entry])
            entries.append(entry)
        return entry

    def remove(self, name: str) -> tuple[StoreEntry, list[Path], list[str]]:
        """Forget ``name`` and delete the files edgesrm created for it that no other entry uses.
        Returns the entry, the files deleted (a Hugging Face cache's blobs, not their links) and
        the names of the entries that still use its file."""
        with self._locked() as entries:
            entry = next((e for e in entries if e.name == name), None)
            if entry is None:
                entry = self.get(name)  # a name without its tag, another case, a Hub reference
                entry = next((e for e in entries if entry is not None and e.name == entry.name), None)
            if entry is None:
                raise EdgesrmError(self.not_found(name))
            entries.remove(entry)
            mine = _files(entry)
            users = [e.name for e in entries if mine & _files(e)]
            deleted = _release(entry, entries)
        return entry, deleted, users


def _files(entry: StoreEntry) -> set[str]:
    return {_real(f) for f in entry.files or [entry.path]}


def _release(entry: StoreEntry, remaining: list[StoreEntry]) -> list[Path]:
    """``entry`` leaves the store: entries sharing its files inherit its ownership of them, and
    the files it owned that no remaining entry uses are deleted (returned)."""
    if not entry.owned:
        return []
    mine = _files(entry)
    for other in remaining:
        if mine & _files(other):
            other.owned = True
    used = set().union(*(_files(e) for e in remaining)) if remaining else set()
    deleted: list[Path] = []
    for file in entry.files or [entry.path]:
        deleted += _delete_file(Path(file), used)
    return deleted


def check_name(name: str) -> None:
    """A store name: ASCII letters, digits and ``._-``, an optional ``:tag``, no path separators,
    not ending in ``.gguf`` (``-m NAME.gguf`` would be taken for a file)."""
    import re

    if (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(:[A-Za-z0-9_.\-]+)?", name) or len(name) > 200
            or name.lower().endswith(".gguf")):
        raise EdgesrmError(f"{name!r} is not a valid model name: use letters, digits, '.', '_', '-' and an "
                           "optional ':tag' (like qwen3-0.6b:q4_k_m), not ending in .gguf",
                           cli=f"{name!r} is not a valid model name: use letters, digits, '.', '_', '-' and an "
                               "optional ':tag' (like qwen3-0.6b:q4_k_m), not ending in .gguf; choose one with --name")


def file_name(name: str) -> str:
    """A new file name for a model edgesrm makes for store name ``name``: the name (':' as '@')
    and a random part, so that two pulls never write one file."""
    import uuid

    return f"{name.replace(':', '@')}.{uuid.uuid4().hex[:8]}.gguf"


def _same_model(a: StoreEntry, b: StoreEntry) -> bool:
    return _real(a.path) == _real(b.path)


def _real(path: str) -> str:
    return os.path.realpath(path)


def _delete_file(path: Path, used: set[str]) -> list[Path]:
    """Delete the file ``path`` is or points to, unless a remaining entry uses it (``used``:
    real paths). In huggingface-hub's cache (snapshots/REV/FILE -> ../../blobs/SHA) the blob goes
    with every snapshot link to it, so that no revision is left with a dangling link."""
    real = Path(_real(str(path)))
    if str(real) in used:
        return []
    if path.is_symlink():
        path.unlink(missing_ok=True)
    snapshots = real.parent.parent / "snapshots"
    if real.parent.name == "blobs" and snapshots.is_dir():
        for link in snapshots.rglob("*"):
            if link.is_symlink() and _real(str(link)) == str(real):
                link.unlink(missing_ok=True)
    if real.is_file():
        real.unlink()
        return [real]
    return []
