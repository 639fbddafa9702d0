"""Importance matrices (``edgesrm imatrix``), quantization with them (``quantize --imatrix``,
``--tensor-type``) and the quality measure (``edgesrm quality``), on tiny real-tokenizer models.

The collector is checked against sums of squares computed by hand from the model's own weights;
the file is read back by gguf-py and, where the peer tools are built (scripts/build_peer.sh), by
llama.cpp's own quantizer.
"""

import json
import os
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

from convert_support import edgesrm_cli, run_on_a_terminal
from edgesrm import imatrix as imx
from edgesrm.convert import quantize
from edgesrm.errors import EdgesrmError
from edgesrm.quality import compare, compare_logits, compare_many
from tiny_models import real_header_path, tiny_model_from_header

TEXT = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May? In May she sold 48 / 2 = 24 clips. "
    "Altogether she sold 48 + 24 = 72 clips. Final answer: 72\n"
) * 30
PEER = Path(os.environ.get("EDGESRM_PEER") or Path.home() / ".cache" / "edgesrm" / "peer") / "llama.cpp" / "build" / "bin"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer on a 2-layer llama with rows of 256 (so that K- and i-quants apply), f16; its
    tied output gives spread-out next-token distributions (embedding scale 1/16)."""
    out = tmp_path_factory.mktemp("imatrix") / "tiny-f16.gguf"
    return tiny_model_from_header(real_header_path("smollm2"), out, n_layer=2, n_embd=256, n_head=4, n_head_kv=2,
                                  n_ff=512, seed=3, embed_scale=1 / 16)


@pytest.fixture(scope="module")
def collected(model):
    return imx.collect(model, [TEXT], datasets=["test text"], n_ctx=64)


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(path)).tensors}


def test_collector_matches_sums_of_squares_computed_by_hand(model, collected):
    from edgesrm.engine.scoring import Scorer

    w = weights(model)
    eps = float(gguf.GGUFReader(str(model)).fields["llama.attention.layer_norm_rms_epsilon"].contents())
    with Scorer(model, n_ctx=64) as scorer:
        chunks = list(scorer.chunks(scorer.tokenize(TEXT)))
    x = w["token_embd.weight"].astype(np.float64)[np.concatenate(chunks)]  # layer 0's input rows
    normed = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * w["blk.0.attn_norm.weight"]
    expected = (normed * normed).sum(axis=0)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        got = collected.sums[name]
        assert got.shape == (1, 256)
        np.testing.assert_allclose(got[0], expected, rtol=2e-3)
        assert collected.counts[name].tolist() == [len(chunks) * 64]
    assert collected.chunks == len(chunks) >= 2
    names = set(collected.sums)
    assert {f"blk.{i}.{t}.weight" for i in (0, 1) for t in ("attn_q", "attn_k", "attn_v", "attn_output",
                                                           "ffn_gate", "ffn_up", "ffn_down")} == names
    assert collected.sums["blk.1.ffn_down.weight"].shape == (1, 512)


def test_output_weight_only_when_asked(model):
    im = imx.collect(model, [TEXT], datasets=["t"], n_ctx=64, process_output=True)
    # This tiny model ties its output to the embedding (no output.weight): nothing extra appears.
    assert set(im.sums) == {n for n in im.sums if n.startswith("blk.")} or "output.weight" in im.sums


def test_file_is_llama_cpps_imatrix_format(collected, tmp_path):
    path = tmp_path / "m.imatrix.gguf"
    imx.write(collected, path)
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "imatrix"
    assert reader.fields["imatrix.datasets"].contents() == ["test text"]
    assert reader.fields["imatrix.chunk_count"].contents() == collected.chunks
    assert reader.fields["imatrix.chunk_size"].contents() == 64
    tensors = {t.name: t for t in reader.tensors}
    t = tensors["blk.0.attn_q.weight.in_sum2"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [256, 1]
    assert list(tensors["blk.0.attn_q.weight.counts"].shape) == [1, 1]
    back = imx.read(path)
    assert set(back.sums) == set(collected.sums) and back.chunks == collected.chunks
    np.testing.assert_allclose(back.sums["blk.1.ffn_up.weight"], collected.sums["blk.1.ffn_up.weight"], rtol=1e-6)
    means = back.means()["blk.0.attn_q.weight"]
    np.testing.assert_allclose(means, (collected.sums["blk.0.attn_q.weight"] / collected.counts["blk.0.attn_q.weight"])[0],
                               rtol=1e-6)


def test_mixture_of_experts_counts_each_expert(tmp_path):
    """MUL_MAT_ID: every token's FFN input reaches the router (a plain matrix) once and each of its
    n_expert_used experts once, so the experts' sums add up to n_expert_used times the router's,
    and their counts to n_expert_used per token."""
    moe = tiny_model_from_header(real_header_path("smollm2"), tmp_path / "moe.gguf", n_layer=1, n_embd=256,
                                 n_head=4, n_head_kv=2, n_ff=256, seed=5, embed_scale=1 / 16, n_expert=4,
                                 n_expert_used=2)
    im = imx.collect(moe, [TEXT], datasets=["test text"], n_ctx=64)
    router, up, gate = (im.sums[f"blk.0.{n}.weight"] for n in ("ffn_gate_inp", "ffn_up_exps", "ffn_gate_exps"))
    tokens = im.counts["blk.0.ffn_gate_inp.weight"][0]
    assert up.shape == (4, 256) and router.shape == (1, 256)
    assert im.counts["blk.0.ffn_up_exps.weight"].sum() == 2 * tokens
    assert (im.counts["blk.0.ffn_up_exps.weight"] > 0).sum() >= 2  # the router spreads tokens
    np.testing.assert_allclose(up.sum(axis=0), 2 * router[0], rtol=1e-5)
    np.testing.assert_allclose(gate, up, rtol=1e-6)
    path = tmp_path / "moe.imatrix.gguf"
    imx.write(im, path)
    back = imx.read(path)
    np.testing.assert_allclose(back.sums["blk.0.ffn_down_exps.weight"], im.sums["blk.0.ffn_down_exps.weight"],
                               rtol=1e-6)
    quantize(moe, tmp_path / "moe-iq3.gguf", "IQ3_XXS", imatrix=path)  # per-expert rows reach the quantizer
    dat = tmp_path / "moe.imatrix.dat"  # the older format keeps the experts in one row; it fits the model too
    write_legacy_dat(im, dat)
    np.testing.assert_allclose(imx.read(dat).means()["blk.0.ffn_up_exps.weight"],
                               im.means()["blk.0.ffn_up_exps.weight"], rtol=1e-6)
    quantize(moe, tmp_path / "moe-iq3-dat.gguf", "IQ3_XXS", imatrix=dat)


@pytest.mark.skipif(not (PEER / "llama-quantize").exists(), reason="llama.cpp's llama-quantize is not built "
                    "(bash scripts/build_peer.sh)")
def test_llama_cpps_quantizer_reads_the_file(model, collected, tmp_path):
    path = tmp_path / "m.imatrix.gguf"
    imx.write(collected, path)
    run = subprocess.run([str(PEER / "llama-quantize"), "--imatrix", str(path), str(model), str(tmp_path / "q.gguf"),
                          "IQ3_XXS"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "loaded 14 importance matrix entries" in run.stdout + run.stderr


def write_legacy_dat(im: imx.Imatrix, path: Path, ncall: int = 3) -> None:
    """llama.cpp's older imatrix.dat, written from its format (tools/imatrix, save_imatrix_legacy):
    per weight the mean squared activation times ncall."""
    import struct

    out = [struct.pack("<i", len(im.sums))]
    for name in sorted(im.sums):
        values = (im.means()[name] * ncall).astype("<f4")
        out += [struct.pack("<i", len(name)), name.encode(), struct.pack("<ii", ncall, values.size), values.tobytes()]
    dataset = im.datasets[0].encode()
    out += [struct.pack("<i", im.chunks), struct.pack("<i", len(dataset)), dataset]
    path.write_bytes(b"".join(out))


def test_the_older_imatrix_dat_is_read(model, collected, tmp_path):
    dat = tmp_path / "m.imatrix.dat"
    write_legacy_dat(collected, dat)
    old = imx.read(dat)
    assert set(old.sums) == set(collected.sums) and old.chunks == collected.chunks
    assert old.datasets == ["test text"]
    for name, mean in collected.means().items():
        np.testing.assert_allclose(old.means()[name], mean, rtol=1e-6, err_msg=name)
    via_dat = quantize(model, tmp_path / "dat.gguf", "IQ3_XXS", imatrix=dat)
    imx.write(collected, tmp_path / "m.gguf")
    via_gguf = quantize(model, tmp_path / "gguf.gguf", "IQ3_XXS", imatrix=tmp_path / "m.gguf")
    # Float32 rounding of mean * ncall moves IQ3_XXS's grid search a little: close, not bitwise equal.
    dat_q, gguf_q = compare_many([via_dat, via_gguf], model, TEXT, n_ctx=64)
    assert dat_q.kl_mean == pytest.approx(gguf_q.kl_mean, rel=0.1)
    # Cut short, or not a matrix of either kind: one error.
    for damaged in (dat.read_bytes()[:100], b"", b"\x00" * 64):
        dat.write_bytes(damaged)
        with pytest.raises(EdgesrmError, match="neither an imatrix GGUF nor llama.cpp's older imatrix.dat"):
            imx.read(dat)


def _imatrix_gguf(path: Path, tensors: dict[str, np.ndarray], **fields) -> Path:
    writer = gguf.GGUFWriter(str(path), arch="")
    writer.add_type(gguf.GGUFType.IMATRIX)
    for key, value in fields.items():
        writer.add_string(key, value) if isinstance(value, str) else writer.add_uint32(key, value)
    for name, data in tensors.items():
        writer.add_tensor(name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_damaged_or_impossible_matrices_are_one_error(model, collected, tmp_path):
    """What a break-it pass found: files gguf-py chokes on, values no sum of squares can hold
    (they ruined the output silently), a FIFO that hung the reader."""
    name = "blk.0.ffn_up.weight"
    sums = collected.sums[name]
    (tmp_path / "magic.gguf").write_bytes(b"GGUF")
    cases = {
        "magic only": (tmp_path / "magic.gguf", "importance matrix"),
        "empty counts": (_imatrix_gguf(tmp_path / "c.gguf", {name + ".in_sum2": sums, name + ".counts": np.zeros(0)}),
                         "0 matrices"),
        "chunk count text": (_imatrix_gguf(tmp_path / "t.gguf", {name + ".in_sum2": sums, name + ".counts": np.ones((1, 1))},
                                           **{"imatrix.chunk_count": "seven"}), "not a number"),
    }
    zeros, negative = imx.Imatrix(), imx.Imatrix()
    for im, values in ((zeros, np.zeros_like(sums)), (negative, -sums)):
        im.sums, im.counts, im.datasets = {name: values}, {name: collected.counts[name]}, ["t"]
        write_legacy_dat(im, tmp_path / f"{id(im)}.dat", ncall=1)
    cases["all zeros"] = (tmp_path / f"{id(zeros)}.dat", "all zeros")
    cases["negative"] = (tmp_path / f"{id(negative)}.dat", "negative")
    os.mkfifo(tmp_path / "fifo.dat")
    cases["fifo"] = (tmp_path / "fifo.dat", "not a file")
    for case, (path, message) in cases.items():
        with pytest.raises(EdgesrmError, match=message):
            quantize(model, tmp_path / "o.gguf", "Q4_K_M", imatrix=path)
        assert not (tmp_path / "o.gguf").exists(), case
    # A dataset name that is not UTF-8 (a file name's undecodable bytes) is written, replaced.
    odd = imx.Imatrix(sums=collected.sums, counts=collected.counts, datasets=["b\udcff.txt"], chunks=1)
    imx.write(odd, tmp_path / "odd.gguf")
    assert imx.read(tmp_path / "odd.gguf").datasets == ["b\ufffd.txt"]


def test_tensor_type_patterns_are_taken_as_written(model, tmp_path):
    # \D (not a digit) would become \d if the pattern were lower-cased, and match nothing.
    out = quantize(model, tmp_path / "mix.gguf", "Q4_K_M", tensor_types=[r"^blk\.0\.attn_k\.\D+$=q8_0"])
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_k.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.1.attn_k.weight"] != gguf.GGMLQuantizationType.Q8_0


@pytest.mark.skipif(not (PEER / "llama-imatrix").exists(), reason="llama.cpp's llama-imatrix is not built "
                    "(bash scripts/build_peer.sh)")
@pytest.mark.parametrize("header", ["smollm2", "gemma3"])  # without a BOS, and with one (each chunk starts with it)
def test_the_same_sums_as_llama_cpps_imatrix_tool(header, tmp_path):
    model = tiny_model_from_header(real_header_path(header), tmp_path / f"{header}.gguf", n_layer=1, n_embd=128,
                                   n_head=2, n_head_kv=1, n_ff=256, seed=7)
    collected = imx.collect(model, [TEXT], datasets=["test text"], n_ctx=64)
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "peer.imatrix.gguf"
    run = subprocess.run([str(PEER / "llama-imatrix"), "-m", str(model), "-f", str(text), "-o", str(out), "-c", "64",
                          "-b", "64", "-ub", "64", "-t", "2", "--no-ppl"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    peer = imx.read(out)  # the same chunks; its kernels differ a little (ffn_down: within 0.3%)
    assert set(peer.sums) == set(collected.sums)
    for name, sums in collected.sums.items():
        np.testing.assert_allclose(peer.counts[name], collected.counts[name], err_msg=name)
        np.testing.assert_allclose(peer.sums[name], sums, rtol=5e-3, atol=1e-6 * float(sums.max()), err_msg=name)
    # The same run in llama.cpp's older format reads back to the same means.
    dat = tmp_path / "peer.imatrix.dat"
    run = subprocess.run([str(PEER / "llama-imatrix"), "-m", str(model), "-f", str(text), "-o", str(dat), "-c", "64",
                          "-b", "64", "-ub", "64", "-t", "2", "--no-ppl", "--output-format", "dat"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    old, means = imx.read(dat), peer.means()
    assert set(old.sums) == set(means) and old.chunks == peer.chunks
    for name, mean in old.means().items():
        np.testing.assert_allclose(mean, means[name], rtol=1e-5, err_msg=name)


def test_quantize_with_an_imatrix_changes_the_weights_and_lowers_kl(model, collected, tmp_path):
    path = tmp_path / "m.imatrix.gguf"
    imx.write(collected, path)
    plain = quantize(model, tmp_path / "plain.gguf", "Q3_K_S")
    weighted = quantize(model, tmp_path / "weighted.gguf", "Q3_K_S", imatrix=path)
    assert weights(plain)["blk.0.ffn_up.weight"].tobytes() != weights(weighted)["blk.0.ffn_up.weight"].tobytes()
    # The output says which matrix made it, under llama-quantize's keys; without one, nothing.
    meta = {f.name: f.contents() for f in gguf.GGUFReader(weighted).fields.values() if f.name.startswith("quantize.")}
    assert meta == {"quantize.imatrix.file": str(path), "quantize.imatrix.dataset": "test text",
                    "quantize.imatrix.entries_count": len(collected.sums),
                    "quantize.imatrix.chunks_count": collected.chunks}
    assert not any(n.startswith("quantize.") for n in gguf.GGUFReader(plain).fields)
    both = compare_many([plain, weighted], model, TEXT, n_ctx=64)  # the reference decoded once for both
    assert [q.model for q in both] == ["plain.gguf", "weighted.gguf"]
    assert both[1].kl_mean < both[0].kl_mean
    alone = compare(weighted, model, TEXT, n_ctx=64)  # the same numbers as a comparison on its own
    assert alone.kl_mean == pytest.approx(both[1].kl_mean, rel=1e-6) and alone.tokens == both[1].tokens
    # The types that need a matrix work with one, and are refused without.
    quantize(model, tmp_path / "iq2.gguf", "IQ2_XS", imatrix=path)
    with pytest.raises(EdgesrmError, match="needs an importance matrix"):
        quantize(model, tmp_path / "iq2b.gguf", "IQ2_XS")


def test_tensor_type_overrides(model, tmp_path):
    out = quantize(model, tmp_path / "mix.gguf", "Q4_K_M", tensor_types=["ffn_down=q8_0", r"attn_(q|k)=q5_k"])
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.1.attn_k.weight"] == gguf.GGMLQuantizationType.Q5_K
    assert types["blk.1.ffn_up.weight"] != gguf.GGMLQuantizationType.Q8_0


@pytest.mark.parametrize("spec, message", [
    ("ffn_down", "PATTERN=TYPE"),
    ("ffn_down=q9_z", "unknown tensor type"),
    ("nothing_like_this=q4_k", "matches no weight"),
    # Norms exist in the model but llama.cpp never quantizes them: the override would do nothing.
    ("attn_norm=q4_k", "matches no weight that llama.cpp quantizes"),
    ("(unclosed=q4_k", "not a valid regular expression"),
    ("ffn_down=iq2_xxs", "needs an importance matrix"),  # not llama.cpp's multi-line banner
    # Valid for Python's re, not for llama.cpp's std::regex (ECMAScript has no lookbehind): llama.cpp's error.
    (r"(?<=blk\.0\.)ffn_down=q8_0", "could not quantize"),
])
def test_bad_tensor_type_overrides_are_one_error(model, tmp_path, spec, message):
    with pytest.raises(EdgesrmError, match=message):
        quantize(model, tmp_path / "x.gguf", "Q4_K_M", tensor_types=[spec])
    assert not (tmp_path / "x.gguf").exists()


def test_tensor_type_overrides_need_a_quantized_type(model, tmp_path):
    # llama.cpp ignores overrides when the file type is not quantized: refused rather than ignored.
    with pytest.raises(EdgesrmError, match="need a quantized type"):
        quantize(model, tmp_path / "x.gguf", "F16", tensor_types=["ffn_down=q8_0"])
    with pytest.raises(EdgesrmError, match="need a quantized type"):  # spelled as quant_type accepts it
        quantize(model, tmp_path / "x.gguf", " bf16 ", tensor_types=["ffn_down=q8_0"])
    assert not (tmp_path / "x.gguf").exists()


def test_an_imatrix_of_another_model_is_refused(model, collected, tmp_path):
    other = tiny_model_from_header(real_header_path("smollm2"), tmp_path / "other.gguf", n_layer=2, n_embd=128,
                                   n_head=4, n_head_kv=2, n_ff=256)
    path = tmp_path / "m.imatrix.gguf"
    imx.write(collected, path)
    with pytest.raises(EdgesrmError, match="does not belong to other.gguf"):
        quantize(other, tmp_path / "o.gguf", "Q4_K_M", imatrix=path)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(EdgesrmError, match="not an importance matrix"):
        quantize(model, tmp_path / "o.gguf", "Q4_K_M", imatrix=tmp_path / "junk.gguf")
    with pytest.raises(EdgesrmError, match="not an importance matrix"):
        quantize(model, tmp_path / "o.gguf", "Q4_K_M", imatrix=model)  # a model, not a matrix
    assert not (tmp_path / "o.gguf").exists()


def test_compare_logits_by_hand():
    ref = np.log(np.array([[0.5, 0.25, 0.25]]))
    same = compare_logits(ref, ref, np.array([0]))
    assert same[0][0] == pytest.approx(0.0, abs=1e-12) and same[1][0]
    other = np.log(np.array([[0.25, 0.5, 0.25]]))
    kl, top1, nll, nll_ref = compare_logits(other, ref, np.array([0]))
    assert kl[0] == pytest.approx(0.5 * np.log(2) + 0.25 * np.log(0.5))
    assert not top1[0] and nll[0] == pytest.approx(np.log(4)) and nll_ref[0] == pytest.approx(np.log(2))


def test_quality_of_a_model_against_itself_is_zero(model):
    q = compare(model, model, TEXT, n_ctx=64)
    assert q.kl_mean < 1e-6 and q.top1 == 1.0 and q.ppl == pytest.approx(q.ppl_reference)


def test_cli_imatrix_on_the_models_own_reasoning_traces(model_path, tmp_path):
    """The default calibration text: the model's cot on shipped GSM8K train questions, with the
    plan (time and memory estimate) said first and the traces named in the file's datasets."""
    out = tmp_path / "traces.imatrix.gguf"
    run = edgesrm_cli("imatrix", str(model_path), "-o", str(out), "--traces", "2", "--max-tokens", "48",
                      "--chunk", "64", env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    plan = next(line for line in run.stderr.splitlines() if line.startswith("calibration text:"))
    assert "reasoning on 2 GSM8K train questions" in plan and "tokens/s" in plan and "peak memory about" in plan
    im = imx.read(out)
    assert im.chunks >= 1 and im.sums and "GSM8K train rows 100-101" in im.datasets[0]


def test_an_error_in_one_trace_stops_the_others(model_path):
    """The traces decode 8 at a time; when one fails (or Ctrl-C arrives) the rest are cancelled at
    their next step instead of running to their end."""
    from edgesrm.runtime import load

    calls = []

    def on_trace() -> None:
        calls.append(1)
        raise RuntimeError("the first trace's consumer failed")

    with load(model_path, n_ctx=8 * (384 + 320), max_sequences=8) as runtime:
        with pytest.raises(RuntimeError, match="consumer failed"):
            imx.reasoning_traces(runtime, imx.train_questions(8), max_tokens=384, on_trace=on_trace)
    assert len(calls) <= 3  # 8 without cancelling (every trace ran to its end)


def test_ctrl_c_while_collecting_stops_and_writes_nothing(model_path, tmp_path):
    """Ctrl-C while loading or collecting stops the run and leaves no file. An interrupt raised
    inside a ctypes callback (llama.cpp's log callback during the load, the eval callback while
    collecting) is lost: the run went on and wrote the file (seen under load in CI; the timing
    decides, so this test does not hit it every time). Signals are now deferred to chunk ends."""
    import signal
    import sys
    import time

    text = tmp_path / "long.txt"
    text.write_text(TEXT * 400, encoding="utf-8")
    out = tmp_path / "m.imatrix.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "edgesrm", "imatrix", str(model_path), "-o", str(out), "--data",
                             str(text)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline().startswith("calibration text:")  # the plan: collection starts now
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a lost interrupt must not leave the run decoding beside the other tests
    assert proc.returncode != 0 and "interrupted" in err and "Exception ignored" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".m.imatrix.gguf*"))


def test_cli_imatrix_then_quantize_then_quality(model, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "cli.imatrix.gguf"
    run = edgesrm_cli("imatrix", str(model), "-o", str(out), "--data", str(text), "--chunk", "64")
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stderr and out.exists()
    again = edgesrm_cli("imatrix", str(model), "-o", str(out), "--data", str(text), "--chunk", "64")
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    q = edgesrm_cli("quantize", str(model), str(tmp_path / "iq3.gguf"), "--quant", "IQ3_XXS", "--imatrix", str(out))
    assert q.returncode == 0, q.stderr
    qual = edgesrm_cli("quality", str(tmp_path / "iq3.gguf"), str(model), "--reference", str(model), "--data",
                       str(text), "--chunk", "64", "--chunks", "2", "--json")
    assert qual.returncode == 0, qual.stderr
    rows = [json.loads(line) for line in qual.stdout.splitlines()]  # one object per model, in order
    assert [r["model"] for r in rows] == ["iq3.gguf", model.name]
    assert rows[0]["tokens"] == 2 * 31  # 2 chunks, each scored from its middle to its next-to-last position
    assert rows[0]["kl_mean"] > 0 and rows[1]["kl_mean"] < 1e-6
    assert rows[0]["gsm8k"] is None
    graded = edgesrm_cli("quality", str(tmp_path / "iq3.gguf"), "--reference", str(model), "--data", str(text),
                         "--chunk", "64", "--gsm8k", "2", "--max-tokens", "16")
    assert graded.returncode == 0, graded.stderr
    assert "GSM8K accuracy: " in graded.stdout and "(reference " in graded.stdout
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    bad = edgesrm_cli("imatrix", str(model), "-o", str(tmp_path / "s.gguf"), "--data", str(short), "--chunk", "64")
    assert bad.returncode == 1 and "shorter than one chunk" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "s.gguf").exists()
    for command, extra in ((["imatrix", str(model), "-o", str(tmp_path / "b.gguf")], ["--traces", "4"]),
                           (["imatrix", str(model), "-o", str(tmp_path / "b.gguf")], ["--max-tokens", "64"]),
                           (["quality", str(model), "--reference", str(model)], ["--traces", "4"]),
                           (["tune", str(model), "-o", str(tmp_path / "b.gguf"), "--memory", "900"], ["--traces", "4"])):
        both = edgesrm_cli(*command, "--data", str(text), *extra)  # options of the traces that --data replaces
        lines = both.stderr.splitlines()
        assert both.returncode == 2 and len(lines) == 1 and extra[0] in lines[0] and "--data" in lines[0], both.stderr
        assert not (tmp_path / "b.gguf").exists()


def test_tune_end_to_end_on_the_embedded_model(model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from edgesrm import speed
    from edgesrm.tune import table, tune

    out = tmp_path / "tuned.gguf"
    said = []
    rows, best = tune(model_path, out, memory_mb=4096, paths=2, names=["Q4_0", "Q8_0"], text=TEXT * 2,
                      log=said.append)
    assert any("already quantized" in m for m in said)  # the embedded model is Q4_1: requantized
    assert {r.name for r in rows} == {"Q4_0", "Q8_0"} and best in rows and out.exists()
    q4, q8 = (next(r for r in rows if r.name == n) for n in ("Q4_0", "Q8_0"))
    assert q4.size_mb < q8.size_mb and q8.kl_mean < q4.kl_mean  # more bits, closer to the source
    assert all(r.speeds[1] > 0 and r.speeds[2] > 0 and r.peak_rss_mb > r.size_mb for r in rows)
    assert any(r.pareto for r in rows)
    # No Q4_K_M among the candidates: the one closest to the source is recommended.
    assert best.name == "Q8_0"
    # Its measured profile is kept for the written file: sc and auto on it measure nothing.
    from edgesrm.engine.backend import default_threads
    assert speed._valid(speed._read_table()[speed.profile_key(out, default_threads())]) == pytest.approx(best.speeds, abs=0.01)
    assert "| Q8_0 (recommended) |" in "\n".join(table(rows, 2, best))
    assert not list(tmp_path.glob("edgesrm-tune-*"))  # the other candidates are removed


def test_tune_bad_input_is_one_error(model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from edgesrm.tune import tune

    with pytest.raises(EdgesrmError, match="no candidate fits 50 MiB"):
        tune(model_path, tmp_path / "t.gguf", memory_mb=50, paths=2, names=["Q4_0"], text=TEXT)
    with pytest.raises(EdgesrmError, match="unknown candidate"):
        tune(model_path, tmp_path / "t.gguf", memory_mb=4096, names=["Q4_ZZ"], text=TEXT)
    with pytest.raises(EdgesrmError, match="strategy must be"):
        tune(model_path, tmp_path / "t.gguf", memory_mb=4096, strategy="beam", text=TEXT)
    with pytest.raises(EdgesrmError, match="needs an importance matrix"):  # before any candidate is made
        tune(model_path, tmp_path / "t.gguf", memory_mb=4096, names=["Q4_0", "IQ3_XXS"], text=TEXT)
    with pytest.raises(EdgesrmError, match="shorter than one chunk"):  # said before any candidate is made
        tune(model_path, tmp_path / "t.gguf", memory_mb=4096, names=["Q4_0"], text="Too short to compare on.")
    assert not list(tmp_path.glob("edgesrm-tune-*"))
    other = tiny_model_from_header(real_header_path("smollm2"), tmp_path / "other.gguf", n_layer=1, n_embd=64)
    matrix = imx.collect(other, [TEXT], datasets=["t"], n_ctx=64)
    imx.write(matrix, tmp_path / "other.imatrix.gguf")
    with pytest.raises(EdgesrmError, match="does not belong to"):
        tune(model_path, tmp_path / "t.gguf", memory_mb=4096, names=["Q4_0"], imatrix=tmp_path / "other.imatrix.gguf",
             text=TEXT)
    assert not (tmp_path / "t.gguf").exists()
    run = edgesrm_cli("tune", str(model_path), "-o", str(tmp_path / "t.gguf"), "--memory", "0")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00not utf-8")
    for command in (["tune", str(model_path), "-o", str(tmp_path / "t.gguf"), "--memory", "100"],
                    ["quality", str(model_path), "--reference", str(model_path)],
                    ["imatrix", str(model_path), "-o", str(tmp_path / "m.gguf")]):
        run = edgesrm_cli(*command, "--data", str(binary))
        assert run.returncode == 1 and run.stderr.count("\n") == 1 and "as UTF-8 text" in run.stderr, run.stderr


def test_quality_shows_a_chunk_bar_on_a_terminal_only(model, tmp_path):
    import sys

    text = tmp_path / "t.txt"
    text.write_text(TEXT * 2, encoding="utf-8")
    command = [sys.executable, "-m", "edgesrm", "quality", str(model), "-r", str(model), "--data", str(text),
               "--chunk", "64"]
    status, shown = run_on_a_terminal(command)
    assert status == 0 and "chunks" in shown and "100%" in shown
    piped = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "chunks" not in piped.stderr and "KL divergence" in piped.stdout


@pytest.mark.parametrize("raw, name", [
    (b"blk.0.attn_k.weight", "blk.0.attn_k.weight"),
    (b"CUDA0#blk.0.attn_k.weight#0", "blk.0.attn_k.weight"),  # a backend's copy
    (b"CPU#blk.1.ffn_up.weight", "blk.1.ffn_up.weight"),  # one '#': what follows it, as llama-imatrix reads it
])
def test_weight_names_as_llama_imatrix_reads_them(raw, name):
    assert imx.weight_name(raw) == name


def test_progress_bar_is_made_at_first_use_and_closed_at_its_total(capsys):
    from edgesrm.cli.common import progress_bar

    with progress_bar(3, "traces") as advance:  # cached work: never advanced, no bar at all
        pass
    with progress_bar(2, "traces") as advance:
        advance()
        advance()
        advance()  # past the total (closed already): no error
    assert capsys.readouterr().err == ""  # not a terminal: quiet


def test_a_candidate_that_cannot_be_measured_is_skipped_not_fatal(tmp_path):
    # The probe runs in a child process; its failure is this candidate's, reported as a reason.
    from edgesrm.tune import _probe_in_child

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF but not really a model")
    probed = _probe_in_child(junk, 2, 1)
    assert probed["speeds"] == {} and probed["failed"] and not probed["failed"].startswith("edgesrm.errors")


def test_the_output_is_never_the_input(model, collected, tmp_path):
    """Even with --force, no command writes over its own input (the model, the matrix, the text)."""
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(model.read_bytes())
    size = copy.stat().st_size
    matrix = tmp_path / "m.imatrix.gguf"
    imx.write(collected, matrix)
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    for command in (["imatrix", str(copy), "-o", str(copy), "--data", str(text)],
                    ["imatrix", str(copy), "-o", str(text), "--data", str(text)],
                    ["quantize", str(copy), str(matrix), "--quant", "Q4_K_M", "--imatrix", str(matrix)],
                    ["tune", str(copy), "-o", str(copy), "--memory", "4096"]):
        run = edgesrm_cli(*command, "--force")
        assert run.returncode == 1 and run.stderr.count("\n") == 1 and "input" in run.stderr, (command, run.stderr)
    assert copy.stat().st_size == size and imx.read(matrix).sums and text.read_text(encoding="utf-8") == TEXT
