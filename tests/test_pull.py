"""`edgesrm pull`, the model store and `--model NAME`, against the real huggingface-hub client
talking to a Hub stand-in on 127.0.0.1 (tests/hub_standin.py); no mocks of huggingface-hub.

Small GGUFs are written here with gguf-py (a header and one tiny tensor: enough for the header
reader; named by quant); the embedded SmolLM2 model is served for the tests that load what
was pulled and for the resume tests (it is larger than huggingface-hub's 10 MiB chunk).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from convert_support import run_on_a_terminal
from hub_standin import hub  # noqa: F401 - the fixture

from edgesrm.cli import cli
from edgesrm.errors import EdgesrmError
from edgesrm.pull import group_gguf_files, pull, quant_of, RemoteFile
from edgesrm.store import ModelStore

ROOT = Path(__file__).resolve().parent.parent


def tiny_gguf(path: Path, tag: str, n: int = 64) -> Path:
    """A small sound GGUF whose content depends on ``tag``."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"tiny {tag}")
    w.add_string("edgesrm.test.tag", tag)
    w.add_tensor("t", np.arange(n, dtype=np.float32) + len(tag))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def env(hub, tmp_path, monkeypatch):  # noqa: F811 - the fixture
    """A fresh store and Hugging Face cache, huggingface-hub pointed at the stand-in."""
    monkeypatch.setenv("EDGESRM_HOME", str(tmp_path / "store"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path


@pytest.fixture
def quants_repo(hub, tmp_path):  # noqa: F811
    files = {f"Tiny-{q}.gguf": tiny_gguf(tmp_path / f"Tiny-{q}.gguf", q, n) for q, n in
             (("Q2_K", 32), ("Q4_K_M", 64), ("Q8_0", 128))}
    files["README.md"] = b"---\nlicense: apache-2.0\n---\n"
    hub.add_repo("org/Tiny-GGUF", files, license="apache-2.0")
    return "org/Tiny-GGUF"


def run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result


def blobs(env: Path) -> list[Path]:
    return sorted(p for p in (env / "hf").rglob("blobs/*") if p.is_file())


# -- choosing files --------------------------------------------------------------------------


def test_quant_names_are_read_from_file_names():
    assert quant_of("Qwen3-0.6B-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_of("smollm2-135m-instruct-iq4_xs.gguf") == "IQ4_XS"
    assert quant_of("Q8_0/model-Q8_0-00001-of-00002.gguf") == "Q8_0"
    assert quant_of("gemma-3-1b-it-BF16.gguf") == "BF16"
    assert quant_of("Qwen3-0.6B.gguf") is None


def test_split_parts_are_grouped_and_incomplete_sets_left_out():
    files = [RemoteFile(f"m-Q4_K_M-0000{i}-of-00003.gguf", 10, None) for i in (1, 2, 3)]
    files += [RemoteFile("m-Q8_0-00001-of-00002.gguf", 10, None), RemoteFile("mmproj-F16.gguf", 1, None)]
    groups = group_gguf_files(files)
    assert list(groups) == ["Q4_K_M"] and [f.path[-16:] for f in groups["Q4_K_M"]] == [
        "-00001-of-00003.gguf"[-16:], "-00002-of-00003.gguf"[-16:], "-00003-of-00003.gguf"[-16:]]


def test_default_is_q4_k_m_and_a_tag_picks_another(env, quants_repo):
    entry = pull(quants_repo)
    assert (entry.name, entry.quant, entry.license) == ("tiny:q4_k_m", "Q4_K_M", "apache-2.0")
    assert Path(entry.path).name == "Tiny-Q4_K_M.gguf" and str(env / "hf") in entry.path
    entry = pull(f"{quants_repo}:q8_0")
    assert (entry.name, entry.quant) == ("tiny:q8_0", "Q8_0")
    assert len(entry.revision) == 40 and len(entry.sha256) == 64


def test_without_q4_k_m_the_smallest_file_of_at_least_4_bits(env, hub, tmp_path):  # noqa: F811
    files = {f"X-{q}.gguf": tiny_gguf(tmp_path / f"X-{q}.gguf", q, n) for q, n in
             (("Q2_K", 16), ("Q3_K_M", 24), ("Q5_K_S", 256), ("Q8_0", 128), ("F16", 512))}
    hub.add_repo("org/X-GGUF", files)
    assert pull("org/X-GGUF").quant == "Q8_0"  # 128 elements: smaller than Q5_K_S's 256


def test_an_unknown_quant_lists_what_the_repo_has(env, quants_repo):
    result = run("pull", f"{quants_repo}:Q5_K_M")
    assert result.exit_code == 1
    assert result.output.strip() == "error: org/Tiny-GGUF has no Q5_K_M GGUF; it has: Q2_K, Q4_K_M, Q8_0"
    assert ModelStore().entries() == []


def test_split_models_are_fetched_whole(env, hub, tmp_path):  # noqa: F811
    files = {f"Big-Q4_K_M-0000{i}-of-00003.gguf": tiny_gguf(tmp_path / f"s{i}.gguf", f"part{i}") for i in (1, 2, 3)}
    hub.add_repo("org/Big-GGUF", files)
    entry = pull("org/Big-GGUF")
    assert [Path(f).name for f in entry.files] == sorted(files) and entry.path == entry.files[0]
    assert entry.size == sum(p.stat().st_size for p in files.values())


def test_revision_pins_a_commit(env, hub, quants_repo, tmp_path):  # noqa: F811
    first = pull(quants_repo).revision
    hub.add_repo(quants_repo, {"Tiny-Q4_K_M.gguf": tiny_gguf(tmp_path / "new.gguf", "new")})
    old = pull(quants_repo, revision=first, name="old")
    new = pull(quants_repo, name="new")
    assert old.revision == first != new.revision and old.sha256 != new.sha256


def test_a_known_short_name_maps_to_its_repo(env, hub, tmp_path):  # noqa: F811
    hub.add_repo("unsloth/Qwen3-0.6B-GGUF", {"Qwen3-0.6B-Q4_K_M.gguf": tiny_gguf(tmp_path / "q.gguf", "q")})
    entry = pull("qwen3-0.6b")
    assert (entry.name, entry.repo) == ("qwen3-0.6b:q4_k_m", "unsloth/Qwen3-0.6B-GGUF")
    assert "qwen3-0.6b" in run("pull", "--help").output


# -- verification and failures -----------------------------------------------------------------


def test_a_sha256_mismatch_is_refused_and_nothing_is_kept(env, hub, quants_repo):  # noqa: F811
    hub.corrupt("Tiny-Q4_K_M.gguf")
    result = run("pull", quants_repo)
    assert result.exit_code == 1 and "failed verification" in result.output and "sha256" in result.output
    assert result.output.count("\n") == 1
    assert ModelStore().entries() == [] and blobs(env) == []
    assert pull(quants_repo).quant == "Q4_K_M"  # the next pull is clean


def test_a_file_that_is_not_gguf_is_refused(env, hub):  # noqa: F811
    hub.add_repo("org/Junk-GGUF", {"Junk-Q4_K_M.gguf": b"this is not a gguf file at all" * 10})
    result = run("pull", "org/Junk-GGUF")
    assert result.exit_code == 1 and "not a GGUF" in result.output
    assert ModelStore().entries() == [] and blobs(env) == []


def test_a_dropped_connection_resumes_with_a_range_request(env, hub, model_path):  # noqa: F811
    hub.add_repo("org/Smol-GGUF", {"Smol-Q4_1.gguf": model_path})
    hub.drop_after("Smol-Q4_1.gguf", (10 << 20) + 1000)
    entry = pull("org/Smol-GGUF")
    gets = [h for m, p, h in hub.requests if m == "GET" and p.endswith("Smol-Q4_1.gguf") or "range" in h]
    assert any(h.get("range", "").startswith(f"bytes={10 << 20}-") for h in gets)
    assert entry.sha256 == hub_sha(model_path) and Path(entry.path).stat().st_size == model_path.stat().st_size


def test_a_reset_connection_is_tried_again(env, hub, model_path):  # noqa: F811
    hub.add_repo("org/Smol-GGUF", {"Smol-Q4_1.gguf": model_path})
    hub.drop_after("Smol-Q4_1.gguf", 5 << 20, reset=True)
    entry = pull("org/Smol-GGUF")
    assert Path(entry.path).stat().st_size == model_path.stat().st_size


def test_not_enough_disk_is_caught_before_downloading(env, quants_repo, monkeypatch, hub):  # noqa: F811
    import shutil

    from edgesrm import pull as pull_module

    real = shutil.disk_usage
    monkeypatch.setattr(pull_module.shutil, "disk_usage", lambda p: real(p)._replace(free=10 << 20))
    before = len(hub.requests)
    result = run("pull", quants_repo)
    assert result.exit_code == 1 and "not enough disk space" in result.output and "GiB free" in result.output
    assert not any("/resolve/" in p for _, p, _ in hub.requests[before:])
    assert ModelStore().entries() == []


def test_offline_uses_the_cache_and_says_so_when_it_cannot(env, quants_repo, hub, monkeypatch):  # noqa: F811
    pull(quants_repo)
    assert run("rm", "tiny:q4_k_m").exit_code == 0  # forgotten, and its downloaded file deleted
    pull(f"{quants_repo}:Q8_0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    entry = pull(f"{quants_repo}:q8_0", name="again")
    assert entry.quant == "Q8_0" and len(hub.requests) == before
    result = run("pull", f"{quants_repo}:Q4_K_M")  # deleted by rm: not in the cache
    assert result.exit_code == 1 and "it has: Q8_0" in result.output
    result = run("pull", "org/Never-GGUF")
    assert result.exit_code == 1 and "HF_HUB_OFFLINE is set" in result.output


def test_no_network_names_hf_hub_offline(env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    result = run("pull", "org/Anything-GGUF")
    assert result.exit_code == 1 and "cannot reach the Hugging Face Hub" in result.output
    assert "HF_HUB_OFFLINE" in result.output and result.output.count("\n") == 1


def test_unknown_repo_and_bad_references(env):
    assert "not found" in run("pull", "org/Missing-GGUF").output
    result = run("pull", "qwen9")
    assert result.exit_code == 1 and "neither a local .gguf file" in result.output
    assert run("pull", "./missing.gguf").exit_code == 1


# -- the store ---------------------------------------------------------------------------------


def test_list_show_and_json(env, quants_repo):
    pull(quants_repo)
    pull(f"{quants_repo}:Q8_0")
    listed = json.loads(run("list", "--json").output)
    assert [(m["name"], m["quant"]) for m in listed] == [("tiny:q4_k_m", "Q4_K_M"), ("tiny:q8_0", "Q8_0")]
    assert set(listed[0]) == {"name", "quant", "size", "path", "source"} and listed[0]["source"] == "hf://org/Tiny-GGUF"
    out = run("show", "tiny:q8_0").output
    assert "source          hf://org/Tiny-GGUF" in out and "license         apache-2.0" in out
    assert "architecture    llama" in out  # what `info` prints
    result = run("show", "tiny")  # two models share the name without a tag
    assert result.exit_code == 1 and "tiny:q4_k_m, tiny:q8_0" in result.output


def test_a_name_not_in_the_store_lists_close_names(env, quants_repo):
    pull(quants_repo)
    for args in (["show", "tiny:q4_k_s"], ["info", "tiny:q4_k_s"], ["ask", "-m", "tiny:q4_k_s", "hi"]):
        result = run(*args)
        assert result.exit_code == 1 and "tiny:q4_k_m" in result.output, args
        assert result.output.count("\n") == 1


def test_rm_keeps_a_blob_another_entry_uses(env, quants_repo):
    a = pull(quants_repo, name="a")
    pull(quants_repo, name="b")
    blob = Path(os.path.realpath(a.path))
    assert "kept: b uses it" in run("rm", "a").output and blob.is_file()
    assert "deleted 1 file" in run("rm", "b").output and not blob.exists()
    assert ModelStore().entries() == []


def test_rm_never_deletes_a_file_already_in_the_cache_or_registered(env, quants_repo, tmp_path):
    from huggingface_hub import hf_hub_download

    theirs = Path(hf_hub_download(quants_repo, "Tiny-Q8_0.gguf", cache_dir=env / "hf", endpoint=os.environ["HF_ENDPOINT"]))
    pull(f"{quants_repo}:Q8_0")
    assert "left in place" in run("rm", "tiny:q8_0").output and theirs.is_file()
    mine = tiny_gguf(tmp_path / "mine.gguf", "mine")
    result = run("pull", str(mine), "--name", "mine")
    assert result.exit_code == 0, result.output
    assert ModelStore().get("mine").path == str(mine) and "left in place" in run("rm", "mine").output
    assert mine.is_file()


def test_a_local_file_registered_or_copied(env, tmp_path, model_path):
    result = run("pull", str(model_path), "--name", "smol")
    assert result.exit_code == 0, result.output
    result = run("pull", str(model_path), "--name", "smol-copy", "--copy")
    entry = ModelStore().get("smol-copy")
    assert entry.owned and Path(entry.path).parent == env / "store" / "models"
    assert "deleted 1 file" in run("rm", "smol-copy").output and not Path(entry.path).exists()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"nope")
    result = run("pull", str(junk), "--name", "junk")
    assert result.exit_code == 1 and "not a GGUF" in result.output and ModelStore().get("junk") is None
    assert run("pull", str(model_path), "--name", "bad/name").exit_code == 1


def test_a_name_taken_by_another_model_is_refused_before_downloading(env, quants_repo, model_path, hub):  # noqa: F811
    run("pull", str(model_path), "--name", "taken")
    before = len(hub.requests)
    result = run("pull", quants_repo, "--name", "taken")
    assert result.exit_code == 1 and "already has a model called 'taken'" in result.output
    assert not any("/resolve/" in p for _, p, _ in hub.requests[before:])


def test_a_pulled_model_runs_by_name_in_a_new_process(env, hub, model_path):  # noqa: F811
    """The whole path, as a user runs it: HF_ENDPOINT in the environment, `edgesrm pull`, then
    `edgesrm ask -m NAME` with the real model."""
    hub.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", {"smollm2-135m-instruct-q4_1.gguf": model_path})
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    edgesrm = [sys.executable, "-m", "edgesrm"]
    done = subprocess.run(edgesrm + ["pull", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"], env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("smollm2-135m-instruct:q4_1  Q4_1")
    done = subprocess.run(edgesrm + ["ask", "-m", "smollm2-135m-instruct", "--max-tokens", "8", "--seed", "1",
                                     "-s", "plain", "Say hi"], env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def hub_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_pull_module_is_light(tmp_path):
    """pull must not import llama.cpp or torch (it runs on small devices, and the RSS target)."""
    code = "import sys, edgesrm.pull; print(sorted(m for m in ('llama_cpp', 'torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                         "PYTHONPATH": str(ROOT)}).stdout.strip()
    assert out == "[]"


def test_bad_store_index_is_one_error(env):
    home = env / "store"
    home.mkdir()
    (home / "index.json").write_text("{not json")
    result = run("list")
    assert result.exit_code == 1 and "unreadable" in result.output
    with pytest.raises(EdgesrmError):
        ModelStore().entries()


def test_a_transformers_checkpoint_is_converted_on_pull(env, hub, tmp_path):  # noqa: F811
    from convert_support import checkpoints

    ckpt = checkpoints.tiny_checkpoint(tmp_path / "ckpt", "llama", num_hidden_layers=1)
    files = {p.name: p for p in ckpt.iterdir() if p.is_file()}
    files["consolidated.pth"] = b"weights in another format, which the converter must not download"
    hub.add_repo("org/tiny-llama", files, license="mit")
    entry = pull("org/tiny-llama", quant="Q8_0")
    assert (entry.name, entry.quant, entry.source, entry.owned) == ("tiny-llama:q8_0", "Q8_0",
                                                                    "hf://org/tiny-llama (converted)", True)
    assert Path(entry.path).parent == env / "store" / "models" and entry.license == "mit"
    assert not any(p.endswith("consolidated.pth") for _, p, _ in hub.requests)
    out = run("info", "tiny-llama")
    assert out.exit_code == 0 and "Q8_0" in out.output, out.output
    assert "deleted 1 file" in run("rm", "tiny-llama").output and not Path(entry.path).exists()


# -- found by trying to break it -------------------------------------------------------------------


def test_names_that_differ_only_by_colon_get_their_own_files(env, tmp_path):
    a, b = tiny_gguf(tmp_path / "a.gguf", "first"), tiny_gguf(tmp_path / "b.gguf", "second")
    assert run("pull", str(a), "--copy", "--name", "x:y").exit_code == 0
    assert run("pull", str(b), "--copy", "--name", "x-y").exit_code == 0
    assert "tiny first" in run("show", "x:y").output and "tiny second" in run("show", "x-y").output


def test_pulling_again_keeps_the_download_edgesrms(env, quants_repo):
    first = pull(quants_repo)
    again = pull(quants_repo)
    assert first.owned and again.owned
    assert "deleted 1 file" in run("rm", again.name).output and blobs(env) == []


def test_an_unwritable_store_and_a_damaged_index_are_one_error(env, tmp_path, monkeypatch, model_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("EDGESRM_HOME", str(blocker / "store"))
    result = run("pull", str(model_path), "--name", "m")
    assert result.exit_code == 1 and result.output.startswith("error: cannot create the model store")
    monkeypatch.setenv("EDGESRM_HOME", str(env / "store2"))
    (env / "store2").mkdir()
    for index in ('{"models": [{"name": "x", "path": 5, "size": "big", "source": null}]}', '{"models": {"a": 1}}'):
        (env / "store2" / "index.json").write_text(index)
        for args in (["list"], ["show", "x"], ["rm", "x"], ["list", "--json"]):
            result = run(*args)
            assert result.exit_code == 1 and "unreadable" in result.output and result.output.count("\n") == 1, args


def test_a_cache_that_is_a_file_is_one_error(env, quants_repo, monkeypatch):
    (env / "hf-file").write_text("x")
    monkeypatch.setenv("HF_HUB_CACHE", str(env / "hf-file"))
    result = run("pull", quants_repo)
    assert result.exit_code == 1 and "not a writable directory" in result.output and result.output.count("\n") == 1


def test_names_that_would_not_resolve_are_refused_and_defaults_are_ascii(env, tmp_path, hub):  # noqa: F811
    f = tiny_gguf(tmp_path / "x.gguf", "x")
    result = run("pull", str(f), "--name", "foo.gguf")
    assert result.exit_code == 1 and "--name" in result.output
    odd = tiny_gguf(tmp_path / "Модель-Q4_K_M.gguf", "odd")
    assert run("pull", str(odd)).exit_code == 0 and ModelStore().get("model:q4_k_m") is not None  # nothing ASCII
    accented = tiny_gguf(tmp_path / "Café-Q8_0.gguf", "cafe")
    assert run("pull", str(accented)).exit_code == 0 and ModelStore().get("cafe:q8_0") is not None
    assert "names no model" in run("pull", ":Q4_K_M").output


def test_a_model_is_found_by_the_reference_it_was_pulled_by(env, quants_repo):
    pull(f"{quants_repo}:Q4_K_M")
    for ref in ("tiny:Q4_K_M", "org/Tiny-GGUF", "org/tiny-gguf:q4_k_m"):
        result = run("info", ref)
        assert result.exit_code == 0 and "Tiny-Q4_K_M.gguf" in result.output, (ref, result.output)


def test_quantize_takes_a_store_name(env, model_path, tmp_path):
    run("pull", str(model_path), "--name", "smol")
    result = run("quantize", "smol", str(tmp_path / "q8.gguf"), "--quant", "Q8_0", "--allow-requantize")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "q8.gguf").stat().st_size > 0


def test_offline_with_revision_main_after_an_online_pull(env, quants_repo, monkeypatch):
    pull(quants_repo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pull(quants_repo, revision="main", name="again").quant == "Q4_K_M"


def test_repos_with_no_runnable_gguf_and_with_one_unnamed_gguf(env, hub, tmp_path):  # noqa: F811
    hub.add_repo("org/Vision-GGUF", {"mmproj-model-f16.gguf": tiny_gguf(tmp_path / "p.gguf", "proj")})
    result = run("pull", "org/Vision-GGUF")
    assert result.exit_code == 1 and "only vision projectors" in result.output
    hub.add_repo("org/Plain-GGUF", {"model.gguf": tiny_gguf(tmp_path / "m.gguf", "plain")})
    entry = pull("org/Plain-GGUF")
    assert (entry.name, entry.quant) == ("plain:gguf", None)


def test_an_entry_whose_file_is_gone(env, tmp_path):
    f = tiny_gguf(tmp_path / "gone.gguf", "gone")
    run("pull", str(f), "--name", "gone", "--copy")
    Path(ModelStore().get("gone").path).unlink()
    assert "file missing" in run("list").output
    result = run("show", "gone")
    assert result.exit_code == 1 and "pull it again" in result.output
    assert "already gone" in run("rm", "gone").output


def test_rm_of_one_file_pulled_at_two_revisions_deletes_it_once_unused(env, hub, quants_repo):  # noqa: F811
    old = pull(quants_repo, name="old")
    hub.add_repo(quants_repo, {"Tiny-Q4_K_M.gguf": Path(os.path.realpath(old.path)).read_bytes(),
                               "README.md": b"changed"})
    new = pull(quants_repo, name="new")
    assert new.revision != old.revision and os.path.realpath(new.path) == os.path.realpath(old.path)
    assert "kept: new uses it" in run("rm", "old").output
    assert "deleted 1 file" in run("rm", "new").output
    assert blobs(env) == [] and not any(p.is_symlink() for p in (env / "hf").rglob("*.gguf"))


def test_a_newer_pull_of_the_same_name_deletes_the_old_download(env, hub, quants_repo, tmp_path):  # noqa: F811
    first = pull(quants_repo)
    hub.add_repo(quants_repo, {"Tiny-Q4_K_M.gguf": tiny_gguf(tmp_path / "v2.gguf", "version 2")})
    second = pull(quants_repo)
    assert second.name == first.name and second.sha256 != first.sha256
    assert [b.name for b in blobs(env)] == [second.sha256]  # the old blob went with its entry


def test_two_pulls_racing_for_one_name_one_fails(env, quants_repo, tmp_path):
    """The name check is repeated under the store's lock when the entry is written."""
    from edgesrm import pull as pull_module

    mine = tiny_gguf(tmp_path / "mine.gguf", "mine")
    real_check = pull_module._check_name_free
    pull_module._check_name_free = lambda *a: None  # as if the other pull registered after our check
    try:
        pull(str(mine), name="racer", copy=True)
        with pytest.raises(EdgesrmError, match="already has a model called 'racer'"):
            pull(quants_repo, name="racer")
    finally:
        pull_module._check_name_free = real_check
    assert ModelStore().get("racer").source == "file"


def test_a_relative_store_home_is_made_absolute(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGESRM_HOME", "relstore")
    f = tiny_gguf(tmp_path / "rel.gguf", "rel")
    assert run("pull", str(f), "--name", "rel", "--copy").exit_code == 0
    assert Path(ModelStore().get("rel").path).is_absolute()


def test_a_local_file_is_listed_with_the_quant_it_declares(env, tmp_path, model_path):
    named_wrong = tmp_path / "smol-Q8_0.gguf"
    named_wrong.symlink_to(model_path)
    run("pull", str(named_wrong), "--name", "smol")
    assert ModelStore().get("smol").quant == "Q4_1"


def test_a_file_in_the_way_of_a_store_name(env, tmp_path, monkeypatch, model_path):
    run("pull", str(model_path), "--name", "smol")
    monkeypatch.chdir(tmp_path)
    Path("smol").write_text("notes, not a model")
    assert run("info", "smol").exit_code == 0  # the store's model, not the text file


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_a_progress_bar_on_a_terminal_and_quiet_otherwise(env, hub, model_path):  # noqa: F811
    hub.add_repo("org/Smol-GGUF", {"Smol-Q4_1.gguf": model_path})
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    code, shown = run_on_a_terminal([sys.executable, "-m", "edgesrm", "pull", "org/Smol-GGUF"], environ)
    assert code == 0, shown
    assert re.search(r"100%\|.*\| 98\.4M/98\.4M \[.*B/s\]", shown), shown[-500:]  # bytes and rate
    fresh = {**environ, "EDGESRM_HOME": str(env / "store2"), "HF_HUB_CACHE": str(env / "hf2")}  # downloads again
    piped = subprocess.run([sys.executable, "-m", "edgesrm", "pull", "org/Smol-GGUF"], env=fresh,
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stdout.count("\n") == 1
    assert "%|" not in piped.stderr and "B/s" not in piped.stderr, piped.stderr
