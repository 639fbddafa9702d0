"""A stand-in for the Hugging Face Hub on 127.0.0.1, for tests that download models.

The real ``huggingface_hub`` client talks to it unchanged: give it the stand-in's ``url`` as the
endpoint (``HfApi(endpoint=url)``, ``hf_hub_download(..., endpoint=url)``,
``snapshot_download(..., endpoint=url)``, or ``HF_ENDPOINT`` in the environment of a process that
imports ``huggingface_hub`` afterwards: the client reads it once, at import).

What it serves (model repos only), as the Hub does for huggingface_hub 2.4:

- ``GET /api/models/{repo_id}`` and ``/api/models/{repo_id}/revision/{revision}`` (``model_info``,
  ``repo_info``): ``id``, ``sha``, ``siblings``, ``tags``, ``cardData`` (``license``), ``gated``...
  Siblings carry ``size``, ``blobId`` and ``lfs`` only with ``?blobs=true``
  (``files_metadata=True``); with ``?expand=...`` only the asked properties come back.
- ``GET /api/models/{repo_id}/tree/{revision}[/{path}]`` (``list_repo_files``, ``list_repo_tree``),
  ``recursive`` or not, in one page; ``expand=true`` adds ``lastCommit``.
- ``HEAD`` and ``GET /{repo_id}/resolve/{revision}/{filename}``, with ``X-Repo-Commit``, ``ETag``,
  ``Content-Length`` and ``Accept-Ranges``. A small file is a plain git file (its ETag is its git
  blob sha1). A large one (>= 10 MiB, or ``*.gguf``, ``*.safetensors`` and the other suffixes the
  Hub's default ``.gitattributes`` sends to LFS) is an LFS file: ``ETag``/``X-Linked-Etag`` are its
  sha256 and ``X-Linked-Size`` its size, and, like the Hub, the resolve URL answers
  ``302 Found`` to a second server on another port (the "CDN", ``cdn_url``), which serves the bytes
  and, like a presigned S3 URL, refuses a request that carries an ``Authorization`` header.
  ``HubStandIn(lfs_redirect=False)`` serves LFS files from the resolve URL directly instead.
  No Xet headers are ever sent, so the client always takes its plain HTTP path.
- ``Range: bytes=N-`` (and ``N-M``, ``-K``) gets ``206 Partial Content`` with ``Content-Range``.
- Errors carry the ``X-Error-Code`` the client maps to its exceptions: ``RepoNotFound`` (404,
  ``RepositoryNotFoundError``), ``RevisionNotFound`` (404, ``RevisionNotFoundError``),
  ``EntryNotFound`` (404, ``RemoteEntryNotFoundError``, a subclass of ``EntryNotFoundError``) and
  ``GatedRepo`` (401 without a token, 403 with the wrong one: ``GatedRepoError``). A route the
  stand-in does not implement gets a plain 404 saying so.

Bytes given as a ``pathlib.Path`` stay on disk and are sent with ``sendfile``: a big file costs
no memory and downloads at the speed of the loopback. The file is hashed once, by ``add_repo``;
do not change it afterwards.

Fault injection, each for the next GET of a file's bytes only (on the CDN for LFS files):
``drop_after`` (the connection ends after some bytes) and ``corrupt`` (one byte differs from the
advertised sha256). ``requests`` logs every request, for assertions about what the client sent.

Tests import the ``hub`` fixture (``from hub_standin import hub``). Run as a script, it serves
files until killed, for trying ``edgesrm pull`` by hand::

    python tests/hub_standin.py org/model model.gguf [sub/name.json=path ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

CHUNK = 1 << 20
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores a file this big or bigger in LFS
# Suffixes of the Hub's default .gitattributes, and GGUF (which uploads send to LFS as binary).
LFS_SUFFIXES = frozenset(
    ".7z .arrow .bin .bz2 .ckpt .ftz .gguf .gz .h5 .joblib .mlmodel .model .msgpack .npy .npz .onnx .ot "
    ".parquet .pb .pickle .pkl .pt .pth .rar .safetensors .tar .tflite .tgz .wasm .xz .zip .zst".split()
)
_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class _Blob:
    """One file of one commit."""

    path: str
    size: int
    git_oid: str  # git blob sha1 of the content, or of the LFS pointer for an LFS file
    sha256: str | None  # set for LFS files only
    pointer_size: int | None
    data: bytes | None
    file: Path | None

    @property
    def etag(self) -> str:
        return f'"{self.sha256 or self.git_oid}"'


@dataclass
class _Commit:
    sha: str
    files: dict[str, _Blob]
    date: str
    license: str | None


@dataclass
class _Repo:
    repo_id: str
    created: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated_token: str | None = None


@dataclass
class _Faults:
    drops: dict[str, tuple[int, bool]] = field(default_factory=dict)  # filename -> (n_bytes, reset)
    corrupt: set[str] = field(default_factory=set)


class _HttpError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, dict(headers or {})


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _git_blob_sha1(size: int, chunks: Iterator[bytes]) -> str:
    h = hashlib.sha1(b"blob %d\0" % size)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _chunks(content: bytes | Path) -> Iterator[bytes]:
    if isinstance(content, bytes):
        yield content
        return
    with open(content, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _make_blob(path: str, content: bytes | Path) -> _Blob:
    size = len(content) if isinstance(content, bytes) else content.stat().st_size
    is_lfs = size >= LFS_MIN_SIZE or Path(path).suffix.lower() in LFS_SUFFIXES
    data, file = (content, None) if isinstance(content, bytes) else (None, content)
    if not is_lfs:
        return _Blob(path, size, _git_blob_sha1(size, _chunks(content)), None, None, data, file)
    h = hashlib.sha256()
    for chunk in _chunks(content):
        h.update(chunk)
    sha256 = h.hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    return _Blob(path, size, _git_blob_sha1(len(pointer), iter([pointer])), sha256, len(pointer), data, file)


class HubStandIn:
    """A Hugging Face Hub stand-in on 127.0.0.1; see the module's docstring.

    Use it as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(self, *, lfs_redirect: bool = True, rate: float | None = None) -> None:
        self.lfs_redirect = lfs_redirect
        self.rate = rate
        """Bytes per second a file's bytes are sent at (None: as fast as the loopback goes), to
        stand for a real network link."""
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        """Every request as (method, path with query, headers with lower-case names), in order."""
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._by_sha256: dict[str, _Blob] = {}
        self._faults = _Faults()
        self._commits = 0
        self._servers: list[_Server] = []
        self._connections: set[socket.socket] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint, ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return self._server_url(0)

    @property
    def cdn_url(self) -> str:
        """Where LFS files are served from (the target of the resolve URL's redirect)."""
        return self._server_url(1)

    def _server_url(self, index: int) -> str:
        if not self._servers:
            raise RuntimeError("HubStandIn is not started")
        host, port = self._servers[index].server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        """Listen on two free ports of 127.0.0.1 (the Hub and its CDN) and serve from threads."""
        if self._servers:
            raise RuntimeError("HubStandIn is already started")
        for role in ("hub", "cdn"):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.hub, server.role = self, role
            self._servers.append(server)
            threading.Thread(target=server.serve_forever, args=(0.05,), name=f"hub-standin-{role}", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection (the client's pooled ones too)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content -----------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: Mapping[str, bytes | Path], *, revision: str = "main",
                 license: str | None = None, gated_token: str | None = None) -> str:
        """Commit ``files`` (path in the repo -> bytes, or a file on disk) to model repo ``repo_id``.

        Creates the repo on the first call. Each call makes a new commit whose tree is exactly
        ``files`` and moves branch ``revision`` to it; older commits stay reachable by their sha.
        ``license`` goes into the model card data (``cardData.license``, tag ``license:...``) of
        this commit. ``gated_token`` makes the repo gated: its files are served only to
        ``Authorization: Bearer <gated_token>`` (the last call's value applies to the whole repo).
        Returns the new commit's sha (40 hex digits).
        """
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
            raise ValueError(f"bad repo id {repo_id!r}")
        if not revision or _COMMIT_HASH.fullmatch(revision):
            raise ValueError(f"revision must be a branch name, not {revision!r}")
        blobs: dict[str, _Blob] = {}
        for path, content in files.items():
            parts = path.split("/")
            if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise ValueError(f"bad file path {path!r}")
            if not isinstance(content, (bytes, Path)):
                raise TypeError(f"{path}: give bytes or a pathlib.Path, not {type(content).__name__}")
            blobs[path] = _make_blob(path, content)
        with self._lock:
            self._commits += 1
            repo = self._repos.setdefault(repo_id, _Repo(repo_id, _now()))
            seed = f"{repo_id}\n{self._commits}\n{repo.refs.get(revision)}\n" + "".join(
                f"{p} {b.git_oid}\n" for p, b in sorted(blobs.items()))
            sha = hashlib.sha1(seed.encode()).hexdigest()
            repo.commits[sha] = _Commit(sha, blobs, _now(), license)
            repo.refs[revision] = sha
            repo.gated_token = gated_token
            for blob in blobs.values():
                if blob.sha256 is not None:
                    self._by_sha256.setdefault(blob.sha256, blob)
        return sha

    # -- faults ------------------------------------------------------------------------------------

    def drop_after(self, filename: str, n_bytes: int, *, reset: bool = False) -> None:
        """End the next GET of ``filename``'s bytes after ``n_bytes`` of the body.

        ``filename`` is the path in the repo (any repo). The response still announces its whole
        length. By default the connection is closed cleanly: a truncated body, which
        huggingface_hub 2.4 retries by itself within the same call after a 1 s sleep, with
        ``Range: bytes=N-`` where N is the last whole 10 MiB chunk it wrote (from 0, without a
        Range, if fewer than 10 MiB arrived). ``reset=True`` aborts the connection with a TCP reset
        instead, which huggingface_hub does not retry: the call raises ``httpx2.ReadError``.
        """
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        with self._lock:
            self._faults.drops[filename] = (n_bytes, reset)

    def corrupt(self, filename: str) -> None:
        """Flip the first byte of the next GET of ``filename``'s bytes (same length, wrong sha256)."""
        with self._lock:
            self._faults.corrupt.add(filename)

    def _take_faults(self, filename: str) -> tuple[tuple[int, bool] | None, bool]:
        with self._lock:
            drop = self._faults.drops.pop(filename, None)
            corrupt = filename in self._faults.corrupt
            self._faults.corrupt.discard(filename)
        return drop, corrupt

    # -- lookups (called from the handler threads) -------------------------------------------------

    def _repo(self, repo_id: str) -> _Repo:
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None:
            raise _HttpError(404, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: _Repo, revision: str) -> _Commit:
        with self._lock:
            sha = repo.refs.get(revision) or (revision if revision in repo.commits else None)
            if sha is not None:
                return repo.commits[sha]
        raise _HttpError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _split_repo(self, segments: list[str]) -> tuple[_Repo, list[str]]:
        """Find the repo id at the start of ``segments`` (``ns/name`` or ``name``)."""
        with self._lock:
            for n in (2, 1):
                repo_id = "/".join(unquote(s) for s in segments[:n])
                if len(segments) >= n and repo_id in self._repos:
                    return self._repos[repo_id], segments[n:]
        raise _HttpError(404, "RepoNotFound", "Repository not found")


def _model_info(repo: _Repo, commit: _Commit, query: dict[str, list[str]]) -> dict[str, Any]:
    files = sorted(commit.files.values(), key=lambda b: b.path)
    blobs = query.get("blobs", ["false"])[-1].lower() == "true"
    siblings = []
    for b in files:
        sibling: dict[str, Any] = {"rfilename": b.path}
        if blobs:
            sibling.update(blobId=b.git_oid, size=b.size)
            if b.sha256 is not None:
                sibling["lfs"] = {"sha256": b.sha256, "size": b.size, "pointerSize": b.pointer_size}
        siblings.append(sibling)
    suffixes = {Path(b.path).suffix for b in files}
    tags = [t for t, on in (("gguf", ".gguf" in suffixes), ("safetensors", ".safetensors" in suffixes)) if on]
    if commit.license:
        tags.append(f"license:{commit.license}")
    tags.append("region:us")
    info: dict[str, Any] = {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": commit.sha,
        "lastModified": commit.date,
        "createdAt": repo.created,
        "private": False,
        "gated": "manual" if repo.gated_token else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "siblings": siblings,
        "spaces": [],
        "usedStorage": sum(b.size for b in files),
    }
    if commit.license:
        info["cardData"] = {"license": commit.license}
    expand = query.get("expand")
    if expand:
        info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
    return info


def _tree(repo: _Repo, commit: _Commit, path: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
    recursive = query.get("recursive", ["false"])[-1].lower() == "true"
    expand = query.get("expand", ["false"])[-1].lower() == "true"
    directories = {"/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)}
    if path and path not in directories:
        raise _HttpError(404, "EntryNotFound", f"{path} does not exist on {commit.sha}",
                         {"X-Repo-Commit": commit.sha})
    prefix = f"{path}/" if path else ""

    def wanted(p: str) -> bool:
        return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

    entries: list[dict[str, Any]] = []
    for d in sorted(filter(wanted, directories)):
        oid = hashlib.sha1(f"tree {commit.sha} {d}".encode()).hexdigest()
        entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
    for p in sorted(filter(wanted, commit.files)):
        b = commit.files[p]
        entry: dict[str, Any] = {"type": "file", "oid": b.git_oid, "size": b.size, "path": p}
        if b.sha256 is not None:
            entry["lfs"] = {"oid": b.sha256, "size": b.size, "pointerSize": b.pointer_size}
        if expand:
            entry["lastCommit"] = {"id": commit.sha, "title": "Upload", "date": commit.date}
        entries.append(entry)
    return entries


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    hub: HubStandIn
    role: str  # "hub" or "cdn"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.hub._lock:
            self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            with self.server.hub._lock:
                self.server.hub._connections.discard(self.connection)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    # -- routing -----------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        hub = self.server.hub
        hub.requests.append((method, self.path, {k.lower(): v for k, v in self.headers.items()}))
        split = urlsplit(self.path)
        segments = split.path.split("/")[1:]
        query = parse_qs(split.query)
        try:
            if self.server.role == "cdn":
                self._cdn(method, segments, query)
            elif segments[:2] == ["api", "models"]:
                self._api(method, segments[2:], query)
            elif "resolve" in segments[1:3]:
                i = segments.index("resolve", 1)
                self._resolve(method, segments[:i], segments[i + 1:])
            else:
                raise _HttpError(404, None, f"The Hub stand-in does not serve {split.path}")
        except _HttpError as e:
            body = json.dumps({"error": e.message}).encode()
            headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._respond(method, e.status, headers, body)
        except OSError:  # the client went away, or stop() closed the connection
            self.close_connection = True

    def _api(self, method: str, segments: list[str], query: dict[str, list[str]]) -> None:
        hub = self.server.hub
        repo, rest = hub._split_repo(segments)
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            commit = hub._commit(repo, unquote(rest[1]) if rest else "main")
            payload: Any = _model_info(repo, commit, query)
        elif rest[0] == "tree" and len(rest) >= 2:
            commit = hub._commit(repo, unquote(rest[1]))
            path = "/".join(unquote(s) for s in rest[2:]).strip("/")
            payload = _tree(repo, commit, path, query)
        else:
            raise _HttpError(404, None, f"The Hub stand-in does not serve /api/models/{'/'.join(segments)}")
        self._respond(method, 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(payload).encode())

    def _resolve(self, method: str, repo_segments: list[str], rest: list[str]) -> None:
        hub = self.server.hub
        repo, extra = hub._split_repo(repo_segments)
        if extra or not rest:
            raise _HttpError(404, "RepoNotFound", "Repository not found")
        if repo.gated_token is not None:
            auth = self.headers.get("Authorization")
            if auth is None:
                raise _HttpError(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have "
                                 "access to it and be authenticated to access it. Please log in.")
            if auth != f"Bearer {repo.gated_token}":
                raise _HttpError(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and you are "
                                 "not in the authorized list.")
        commit = hub._commit(repo, unquote(rest[0]))
        filename = "/".join(unquote(s) for s in rest[1:])
        blob = commit.files.get(filename)
        if blob is None:
            raise _HttpError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "ETag": blob.etag, "Accept-Ranges": "bytes"}
        if blob.sha256 is not None:
            headers.update({"X-Linked-Etag": blob.etag, "X-Linked-Size": str(blob.size)})
            if hub.lfs_redirect:
                location = f"{hub.cdn_url}/cdn/{blob.sha256}?filename={quote(blob.path, safe='')}"
                body = f"Found. Redirecting to {location}".encode()
                self._respond(method, 302, {**headers, "Location": location, "Content-Type": "text/plain"}, body)
                return
        self._send_blob(method, blob, headers)

    def _cdn(self, method: str, segments: list[str], query: dict[str, list[str]]) -> None:
        hub = self.server.hub
        with hub._lock:
            blob = hub._by_sha256.get(segments[1]) if len(segments) == 2 and segments[0] == "cdn" else None
        if blob is None:
            raise _HttpError(404, None, "NoSuchKey")
        if "Authorization" in self.headers:
            # A presigned S3 URL carries its credentials in the query: S3 refuses a second mechanism.
            raise _HttpError(400, None, "Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                             "parameter, Signature query string parameter or the Authorization header should be specified")
        filename = query.get("filename", [blob.path])[-1]
        name = filename.rsplit("/", 1)[-1]
        headers = {"ETag": blob.etag, "Accept-Ranges": "bytes",
                   "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}; filename=\"{name}\""}
        self._send_blob(method, blob, headers, fault_name=filename)

    # -- responses ---------------------------------------------------------------------------------

    def _respond(self, method: str, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _send_blob(self, method: str, blob: _Blob, headers: dict[str, str], fault_name: str | None = None) -> None:
        start, end, status = 0, blob.size - 1, 200
        header = self.headers.get("Range")
        if header and blob.size:
            m = _RANGE.fullmatch(header)
            if m is None or not any(m.groups()):
                raise _HttpError(416, None, "Invalid range", {"Content-Range": f"bytes */{blob.size}"})
            first, last = m.groups()
            if first:
                start, end = int(first), min(int(last), blob.size - 1) if last else blob.size - 1
            else:
                start = max(blob.size - int(last), 0)
            if start > end:
                raise _HttpError(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{blob.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        count = end - start + 1
        self.send_response(status)
        for k, v in {"Content-Type": "application/octet-stream", **headers, "Content-Length": str(count)}.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD":
            return
        drop, corrupt = self.server.hub._take_faults(fault_name or blob.path)
        self._write_body(blob, start, min(count, drop[0]) if drop else count, corrupt)
        if drop:
            self.close_connection = True
            if drop[1]:  # a TCP reset: close at once, with SO_LINGER 0
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()

    def _write_body(self, blob: _Blob, start: int, count: int, corrupt: bool) -> None:
        if count <= 0:
            return
        if blob.file is None:
            view = memoryview(blob.data or b"")[start:start + count]
            if corrupt:
                self.wfile.write(bytes([view[0] ^ 0xFF]))
                view = view[1:]
            for offset in range(0, len(view), CHUNK):
                self.wfile.write(view[offset:offset + CHUNK])
            return
        with open(blob.file, "rb") as f:
            if corrupt:
                f.seek(start)
                self.wfile.write(bytes([f.read(1)[0] ^ 0xFF]))
                start, count = start + 1, count - 1
            rate = self.server.hub.rate
            if count and rate is None:
                self.connection.sendfile(f, start, count)
            elif count:  # paced: CHUNK at a time, each at its time
                began = time.perf_counter()
                for sent in range(0, count, CHUNK):
                    ahead = sent / rate - (time.perf_counter() - began)
                    if ahead > 0:
                        time.sleep(ahead)
                    self.connection.sendfile(f, start + sent, min(CHUNK, count - sent))


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    """A started ``HubStandIn``, stopped after the test (``from hub_standin import hub``)."""
    with HubStandIn() as stand_in:
        yield stand_in


def main(argv: list[str]) -> None:
    """Serve files until killed: ``hub_standin.py REPO_ID [NAME=]PATH...``; prints ``URL COMMIT``."""
    if len(argv) < 2:
        sys.exit("usage: hub_standin.py REPO_ID [NAME=]PATH...")
    files: dict[str, bytes | Path] = {}
    for arg in argv[1:]:
        name, _, path = arg.rpartition("=")
        files[name or Path(path).name] = Path(path)
    rate = os.environ.get("HUB_STANDIN_RATE")  # bytes per second, to stand for a network link
    with HubStandIn(rate=float(rate) if rate else None) as stand_in:
        sha = stand_in.add_repo(argv[0], files)
        print(stand_in.url, sha, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
