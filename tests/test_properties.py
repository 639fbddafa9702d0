"""Properties that hold for every input: answers (extraction, normalisation, matching) and the
GGUF header reader, checked with hypothesis on arbitrary and adversarial inputs."""

import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesrm import models
from edgesrm.answers import answers_match, extract_answer, normalize
from edgesrm.errors import EdgesrmError

# Pieces answers are made of: arbitrary text finds crashes, these find wrong canonical forms.
TOKENS = [
    "0", "1", "2", "5", "9", "10", "12", "000", "1,000", "1.5", ".5", "３", "٣", "−", "－", "＋", "-", "+",
    " ", "  ", "\n", ",", ".", ";", ":", "'", "’", "\u2009", "\u202f", "\u00a0", "/", "*", "×", "·", "^",
    "_", "=", "%", "$", "\\$", "€", "(", ")", "[", "]", "{", "}", "\\{", "\\}", "\\frac", "\\dfrac",
    "\\sqrt", "\\boxed{", "\\text{", "\\mbox{", "\\left(", "\\right)", "\\,", "\\!", ",\\!", "{,}", "\\times",
    "\\cdot", "\\circ", "°", "\\pi", "\\infty", "\\pm", "e", "E", "e3", "x", "i", "k", "A", "b", "(b)", "C.",
    "option", "answer", "Final answer:", "the answer is", "####", "million", "thousand", "dozen", "apples",
    "cm", "dollars", "Paris", "**", "`", "\"", "³", "⁻", "½",
]
answer_like = st.lists(st.sampled_from(TOKENS), max_size=12).map("".join)
any_text = st.one_of(st.text(max_size=200), answer_like)
FAST = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(any_text)
def test_extract_answer_never_raises(text):
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and answer)


@FAST
@given(any_text)
def test_normalize_is_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once


@FAST
@given(any_text)
def test_normalize_of_an_extracted_answer_is_idempotent(text):
    once = normalize(extract_answer(text))
    assert normalize(once) == once


@FAST
@given(any_text, any_text)
def test_answers_match_is_symmetric(a, b):
    assert answers_match(a, b) == answers_match(b, a)


@FAST
@given(any_text)
def test_an_answer_matches_its_normal_form(text):
    if normalize(text) is not None:
        assert answers_match(text, normalize(text))


PATHOLOGICAL = [
    "\\boxed{", "{", "}", "{}", "final answer ", "Final answer:", "the answer is ", "answer is is ",
    "\n", " ", "\n ", "1,", "1 ", "1,000,", "1.000.", "1'", "9", "−", "-1", "(", "((1", "\\frac{", "\\frac",
    "\\sqrt{", "^", "2^", "1e", "1.5e3", "\\text{", "\\left(", "\\,", ",\\! ", "**", ". ", "x = ", "=",
    "####", "a ", "ab", "1/", "1 1/2 ", "$", "\\$1,000 ", "٣", "\u2009000", "million ",
    "the answer is correct ", "the answer is a long remark with no digits at all ", "Answer: \n",
]


@pytest.mark.parametrize("unit", PATHOLOGICAL)
def test_extraction_and_normalisation_stay_fast_on_100kb(unit):
    text = unit * (100_000 // len(unit))
    for variant in (text, text + "x", "Final answer: " + text, "\\boxed{" + text + "}"):
        started = time.perf_counter()
        extracted = extract_answer(variant)
        normalize(extracted)
        normalize(variant)
        elapsed = time.perf_counter() - started
        # linear work on 100 KB is tens of milliseconds; anything quadratic takes minutes
        assert elapsed < 3.0, f"{unit!r}: {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------------
# GGUF headers


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    """A small valid GGUF: scalar, string and array metadata, and two tensors."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_float32("tiny.scale", 0.5)
    writer.add_bool("tiny.flag", True)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
    writer.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0, 3.0])
    writer.add_tensor("tok_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    header = models.read_header(path)  # the reader accepts it
    assert header.metadata["general.name"] == "tiny" and len(header.tensors) == 2
    return data


class _GuardedFile:
    """A file whose reads may not ask for (much) more than the file holds: lengths are checked
    before anything is allocated for them."""

    def __init__(self, f, size):
        self._f, self._size = f, size

    def read(self, n=-1):
        assert n is None or n <= max(self._size, 64), f"read({n}) from a {self._size}-byte file"
        return self._f.read(n)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _read_guarded(path, monkeypatch):
    size = path.stat().st_size
    monkeypatch.setattr(models, "open", lambda p, mode="r", *a, **k: _GuardedFile(open(p, mode, *a, **k), size),
                        raising=False)
    try:
        return models.read_header(path)
    except EdgesrmError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return None
    finally:
        monkeypatch.undo()


def test_every_truncation_is_one_clear_error(gguf_bytes, tmp_path, monkeypatch):
    """Cut anywhere: the header reader or the completeness check says so, in one EdgesrmError."""
    path = tmp_path / "cut.gguf"
    parsed_from = None
    for cut in range(len(gguf_bytes)):
        path.write_bytes(gguf_bytes[:cut])
        header = _read_guarded(path, monkeypatch)
        if header is None:
            assert parsed_from is None, f"the header parsed at {parsed_from} bytes but not at {cut}"
            continue
        if parsed_from is None:
            parsed_from = cut
            assert cut <= header.data_offset  # from here on only padding and tensor data are missing
        with pytest.raises(EdgesrmError, match="is truncated"):
            models.check_complete(path, header)
    assert parsed_from is not None


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_headers_raise_edgesrm_error_or_parse(gguf_bytes, tmp_path, monkeypatch, data):
    """Flipped bytes and implausible lengths, counts, types: EdgesrmError or a parsed header."""
    blob = bytearray(gguf_bytes)
    header_len = min(len(blob), 400)
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        at = data.draw(st.integers(4, header_len - 1), label="offset")
        kind = data.draw(st.sampled_from(["byte", "u64", "u32"]), label="kind")
        if kind == "byte":
            blob[at] = data.draw(st.integers(0, 255), label="value")
        else:
            fmt = "<Q" if kind == "u64" else "<I"
            value = data.draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, 10**7, 10**12])
                              if fmt == "<Q" else st.sampled_from([0, 1, 4, 8, 9, 13, 255, 2**31, 2**32 - 1]),
                              label="value")
            value %= 2 ** (8 * struct.calcsize(fmt))
            blob[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)[: len(blob) - at]
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(4, len(blob)), label="length")]
    path = tmp_path / "mutated.gguf"
    path.write_bytes(bytes(blob))
    header = _read_guarded(path, monkeypatch)
    if header is not None:  # what resolve_model does next
        try:
            models.check_complete(path, header)
        except EdgesrmError as exc:
            assert str(path) in str(exc)


def test_a_large_models_header_is_kept_on_disk_and_read_back_equal(model_path, tmp_path, monkeypatch):
    """The parsed header of a model of 32 MiB or more is cached by file identity: read back
    equal, and not used once the file changes."""
    import shutil

    monkeypatch.setenv("EDGESRM_MODELS", str(tmp_path / "models"))  # the caches sit beside the store
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(model_path, copy)
    parsed = models.read_header(copy)
    cached = list((tmp_path / "headers").glob("*.json"))
    assert len(cached) == 1
    models._HEADERS.clear()
    assert models.read_header(copy) == parsed  # from the cache file
    with open(copy, "r+b") as f:  # same size, new mtime: another file as far as the cache knows
        f.seek(len(b"GGUF"))
        f.write(b"\xff\xff\xff\x7f")  # an implausible version is fine; the tensor count next is not
        f.seek(8)
        f.write((10**9).to_bytes(8, "little"))
    models._HEADERS.clear()
    with pytest.raises(EdgesrmError):
        models.read_header(copy)
