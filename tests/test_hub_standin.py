"""The Hub stand-in (tests/hub_standin.py) against the real huggingface_hub client, no mocks.

These tests also pin down what huggingface_hub 2.4 does, which ``edgesrm pull`` has to live with:
it does not check a download's sha256; it resumes a broken download itself, inside the same call,
but only from the last whole 10 MiB chunk it wrote; a TCP reset is not retried; and a failed call
deletes its partial file, so the next call starts from zero.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hub_standin import HubStandIn, hub  # noqa: F401 - hub is a fixture

MiB = 1024 * 1024
CHUNK = 10 * MiB  # huggingface_hub's DOWNLOAD_CHUNK_SIZE: what it writes to disk at a time
CONFIG = b'{"architectures": ["LlamaForCausalLM"]}\n'


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gets(hub: HubStandIn) -> list[tuple[str, dict[str, str]]]:
    """The GETs of file bytes (resolve URLs and the CDN), as (path, headers)."""
    return [(path, headers) for method, path, headers in hub.requests
            if method == "GET" and ("/resolve/" in path or path.startswith("/cdn/"))]


def download(hub: HubStandIn, cache: Path, repo_id: str, filename: str, **kwargs) -> bytes:
    path = hf_hub_download(repo_id, filename, cache_dir=cache, endpoint=hub.url, token=False, **kwargs)
    return Path(path).read_bytes()


def test_model_info_and_file_listing(hub):
    weights = os.urandom(3000)
    sha = hub.add_repo("org/tiny", {"config.json": CONFIG, "model.safetensors": weights,
                                    "gguf/tiny-Q8_0.gguf": b"GGUF" + bytes(100)}, license="apache-2.0")
    api = HfApi(endpoint=hub.url, token=False)

    info = api.model_info("org/tiny")
    assert (info.id, info.sha, info.author, info.gated) == ("org/tiny", sha, "org", False)
    assert info.card_data.license == "apache-2.0"
    assert {"gguf", "safetensors", "license:apache-2.0"} <= set(info.tags)
    # As on the Hub, sizes and LFS details come with files_metadata=True only.
    assert [(s.rfilename, s.size) for s in info.siblings] == [
        ("config.json", None), ("gguf/tiny-Q8_0.gguf", None), ("model.safetensors", None)]
    siblings = {s.rfilename: s for s in api.model_info("org/tiny", files_metadata=True).siblings}
    assert siblings["config.json"].size == len(CONFIG) and siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(CONFIG)
    assert siblings["model.safetensors"].lfs.sha256 == sha256(weights)
    assert siblings["model.safetensors"].lfs.size == 3000
    assert api.model_info("org/tiny", expand=["sha"]).sha == sha

    assert api.list_repo_files("org/tiny") == ["config.json", "gguf/tiny-Q8_0.gguf", "model.safetensors"]
    top = {f.path: f for f in api.list_repo_tree("org/tiny")}
    assert set(top) == {"gguf", "config.json", "model.safetensors"}
    assert not hasattr(top["gguf"], "size")  # a RepoFolder
    assert [f.path for f in api.list_repo_tree("org/tiny", "gguf")] == ["gguf/tiny-Q8_0.gguf"]
    assert top["model.safetensors"].lfs.sha256 == sha256(weights) and top["model.safetensors"].size == 3000

    lfs = get_hf_file_metadata(hf_hub_url("org/tiny", "model.safetensors", endpoint=hub.url), token=False)
    assert (lfs.commit_hash, lfs.etag, lfs.size, lfs.xet_file_data) == (sha, sha256(weights), 3000, None)
    assert lfs.location.startswith(hub.cdn_url + "/cdn/")  # the Hub's 302 to its CDN
    plain = get_hf_file_metadata(hf_hub_url("org/tiny", "config.json", endpoint=hub.url), token=False)
    assert (plain.etag, plain.size) == (git_blob_sha1(CONFIG), len(CONFIG))
    assert plain.location == hf_hub_url("org/tiny", "config.json", endpoint=hub.url)


def test_download_then_local_files_only(hub, tmp_path):
    weights = os.urandom(5000)
    sha = hub.add_repo("org/tiny", {"config.json": CONFIG, "model.gguf": weights})
    assert download(hub, tmp_path, "org/tiny", "model.gguf") == weights
    assert download(hub, tmp_path, "org/tiny", "config.json") == CONFIG
    snapshot = tmp_path / "models--org--tiny" / "snapshots" / sha
    assert (snapshot / "model.gguf").resolve() == tmp_path / "models--org--tiny" / "blobs" / sha256(weights)
    # The LFS file came from the CDN, without the Hub's credentials; the small file from the Hub.
    assert [path.split("?")[0] for path, _ in gets(hub)] == [f"/cdn/{sha256(weights)}", "/org/tiny/resolve/main/config.json"]

    hub.requests.clear()
    assert download(hub, tmp_path, "org/tiny", "model.gguf", local_files_only=True) == weights
    assert hub.requests == []
    with pytest.raises(LocalEntryNotFoundError):
        download(hub, tmp_path, "org/tiny", "missing.json", local_files_only=True)

    # snapshot_download (what `edgesrm convert` uses): repo_info, then the tree, then each file.
    folder = snapshot_download("org/tiny", cache_dir=tmp_path / "snap", endpoint=hub.url, token=False,
                               allow_patterns=["*.json"])
    assert Path(folder).name == sha and os.listdir(folder) == ["config.json"]


def test_a_dropped_connection_is_resumed_inside_the_same_call(hub, tmp_path):
    weights = os.urandom(CHUNK + MiB)
    hub.add_repo("org/tiny", {"model.gguf": weights})
    hub.drop_after("model.gguf", CHUNK + 1000)
    assert download(hub, tmp_path, "org/tiny", "model.gguf") == weights  # sleeps 1 s, then resumes
    (_, first), (_, second) = gets(hub)
    assert "range" not in first
    assert second["range"] == f"bytes={CHUNK}-"  # the last whole 10 MiB chunk, not the byte it got to

    # Dropped before 10 MiB: nothing was written, the retry starts again from 0.
    hub.requests.clear()
    hub.drop_after("model.gguf", 1000)
    assert download(hub, tmp_path / "again", "org/tiny", "model.gguf") == weights
    assert ["range" in headers for _, headers in gets(hub)] == [False, False]


def test_a_reset_connection_raises_and_the_next_call_starts_over(hub, tmp_path):
    weights = os.urandom(CHUNK + MiB)
    hub.add_repo("org/tiny", {"model.gguf": weights})
    hub.drop_after("model.gguf", CHUNK + 1000, reset=True)
    with pytest.raises(Exception) as failure:
        download(hub, tmp_path, "org/tiny", "model.gguf")
    assert type(failure.value).__name__ == "ReadError"  # httpx2's: not retried by huggingface_hub
    assert not list(tmp_path.rglob("*.incomplete"))  # the partial file is deleted
    assert download(hub, tmp_path, "org/tiny", "model.gguf") == weights
    assert ["range" in headers for _, headers in gets(hub)] == [False, False]


def test_corrupt_bytes_are_not_detected_by_huggingface_hub(hub, tmp_path):
    weights = os.urandom(4000)
    hub.add_repo("org/tiny", {"model.gguf": weights})
    hub.corrupt("model.gguf")
    got = download(hub, tmp_path, "org/tiny", "model.gguf")
    assert len(got) == len(weights) and got != weights and sha256(got) != sha256(weights)
    # Only once: a forced download gets the right bytes.
    assert download(hub, tmp_path, "org/tiny", "model.gguf", force_download=True) == weights


def test_revisions(hub, tmp_path):
    old = hub.add_repo("org/tiny", {"config.json": CONFIG, "model.gguf": b"v1" * 100})
    new = hub.add_repo("org/tiny", {"config.json": CONFIG, "model-v2.gguf": b"v2" * 100})
    dev = hub.add_repo("org/tiny", {"model.gguf": b"dev"}, revision="dev")
    assert len({old, new, dev}) == 3 and all(len(s) == 40 for s in (old, new, dev))
    api = HfApi(endpoint=hub.url, token=False)
    assert api.model_info("org/tiny").sha == new
    assert api.model_info("org/tiny", revision=old).sha == old
    assert api.list_repo_files("org/tiny") == ["config.json", "model-v2.gguf"]
    assert api.list_repo_files("org/tiny", revision=old) == ["config.json", "model.gguf"]
    assert download(hub, tmp_path, "org/tiny", "model.gguf", revision=old) == b"v1" * 100
    assert download(hub, tmp_path, "org/tiny", "model.gguf", revision="dev") == b"dev"
    assert download(hub, tmp_path, "org/tiny", "model-v2.gguf") == b"v2" * 100
    with pytest.raises(EntryNotFoundError):
        download(hub, tmp_path, "org/tiny", "model.gguf")  # gone from main


def test_errors(hub, tmp_path):
    hub.add_repo("org/tiny", {"config.json": CONFIG})
    hub.add_repo("org/gated", {"model.gguf": b"GGUF"}, gated_token="hf_granted")
    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        download(hub, tmp_path, "org/missing", "config.json")
    with pytest.raises(EntryNotFoundError):
        download(hub, tmp_path, "org/tiny", "missing.json")
    with pytest.raises(RevisionNotFoundError):
        download(hub, tmp_path, "org/tiny", "config.json", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files("org/tiny", revision="v9")

    assert api.model_info("org/gated").gated == "manual"  # listing a gated repo needs no token
    with pytest.raises(GatedRepoError):
        download(hub, tmp_path, "org/gated", "model.gguf")
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "model.gguf", cache_dir=tmp_path, endpoint=hub.url, token="hf_other")
    path = hf_hub_download("org/gated", "model.gguf", cache_dir=tmp_path, endpoint=hub.url, token="hf_granted")
    assert Path(path).read_bytes() == b"GGUF"
    # The token went to the Hub, never to the CDN.
    head = [h for m, p, h in hub.requests if m == "HEAD" and p.startswith("/org/gated/")][-1]
    cdn = [h for m, p, h in hub.requests if p.startswith("/cdn/")][-1]
    assert head["authorization"] == "Bearer hf_granted" and "authorization" not in cdn


def test_ranges_and_lfs_without_redirect(tmp_path):
    with HubStandIn(lfs_redirect=False) as stand_in:
        stand_in.add_repo("solo", {"model.gguf": bytes(range(10))})
        url = f"{stand_in.url}/solo/resolve/main/model.gguf"

        def get(range_: str) -> tuple[int, bytes, str | None]:
            request = urllib.request.Request(url, headers={"Range": range_})
            try:
                with urllib.request.urlopen(request) as response:
                    return response.status, response.read(), response.headers["Content-Range"]
            except urllib.error.HTTPError as e:
                return e.code, b"", e.headers["Content-Range"]

        assert get("bytes=7-") == (206, bytes([7, 8, 9]), "bytes 7-9/10")
        assert get("bytes=2-3") == (206, bytes([2, 3]), "bytes 2-3/10")
        assert get("bytes=-2") == (206, bytes([8, 9]), "bytes 8-9/10")
        assert get("bytes=10-") == (416, b"", "bytes */10")
        path = hf_hub_download("solo", "model.gguf", cache_dir=tmp_path, endpoint=stand_in.url, token=False)
        assert Path(path).read_bytes() == bytes(range(10))
        assert not any(p.startswith("/cdn/") for _, p, _ in stand_in.requests)


def test_hf_endpoint_in_a_subprocess(hub, tmp_path):
    hub.add_repo("org/env", {"hello.txt": b"hello from the stand-in\n"})
    script = ("import sys, huggingface_hub, huggingface_hub.constants\n"
              "print(huggingface_hub.constants.ENDPOINT)\n"
              "path = huggingface_hub.hf_hub_download('org/env', 'hello.txt', cache_dir=sys.argv[1])\n"
              "print(open(path).read(), end='')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_HUB_DISABLE_TELEMETRY="1")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{hub.url}\nhello from the stand-in\n"
    assert ("HEAD", "/org/env/resolve/main/hello.txt") in [(m, p) for m, p, _ in hub.requests]


def test_a_big_file_streams_with_flat_memory(tmp_path):
    size_mb = 200
    source, digest = tmp_path / "big.gguf", hashlib.sha256()
    block = os.urandom(MiB)
    with open(source, "wb") as f:
        for i in range(size_mb):
            chunk = i.to_bytes(8, "little") + block[8:]
            digest.update(chunk)
            f.write(chunk)
    # The stand-in in its own process, so that its memory is measured alone.
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hub_standin.py")), "org/big",
                               f"model.gguf={source}"], stdout=subprocess.PIPE, text=True)
    try:
        url, _sha = server.stdout.readline().split()
        process, peak, done = psutil.Process(server.pid), [0], threading.Event()
        before = process.memory_info().rss

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        client_before = psutil.Process().memory_info().rss
        start = time.perf_counter()
        path = hf_hub_download("org/big", "model.gguf", cache_dir=tmp_path / "cache", endpoint=url, token=False)
        seconds = time.perf_counter() - start
        client_after = psutil.Process().memory_info().rss
        done.set()
        sampler.join()
    finally:
        server.terminate()
        server.wait(timeout=10)
    grown = (peak[0] - before) / MiB
    print(f"\n{size_mb} MB in {seconds:.2f} s = {size_mb / seconds:.0f} MB/s; stand-in RSS "
          f"{before / MiB:.0f} MiB, +{grown:.1f} MiB at most; client RSS +{(client_after - client_before) / MiB:.1f} MiB")
    assert grown < 20
    received = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            received.update(chunk)
    assert received.hexdigest() == digest.hexdigest()
