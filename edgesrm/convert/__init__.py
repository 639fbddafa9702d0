"""Hugging Face checkpoints to GGUF, without PyTorch: ``convert`` and ``quantize``.

    from edgesrm.convert import convert, quantize
    convert("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2.gguf", quant="Q4_K_M")
    quantize("model-f16.gguf", "model-q8.gguf", "Q8_0")

A conversion reads config.json (which family), the tokenizer files (the vocabulary) and the
safetensors headers, checks them all against each other, then streams the tensors into a
temporary file beside the output that replaces it only once complete. ``quant`` runs
llama.cpp's quantizer on that file before the rename.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import gguf

from ..errors import EdgesrmError
from ..models import check_gguf, read_header, resolve_model
from .archs import FAMILIES, OUTTYPES, family_for
from .quantize import NEEDS_IMATRIX, QUANT_TYPES, quant_type, quantize_file, tensor_overrides
from .safetensors import open_checkpoint
from .source import read_json_object, resolve_source
from .tokenizer import load_vocab
from .writer import atomic_output, check_destination, write_gguf

__all__ = ["convert", "quantize", "OUTTYPES", "QUANT_TYPES", "FAMILIES"]


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    outtype: str | None = None,
    quant: str | None = None,
    revision: str | None = None,
    force: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> Path:
    """Convert the checkpoint ``src`` (a directory or a Hugging Face repo id) to the GGUF ``out``.

    ``outtype`` (f32, f16, bf16, q8_0) is how matrices are stored; default f16, or with
    ``quant`` the checkpoint's own 16/32-bit type so that quantization starts from the exact
    weights. ``quant`` (Q4_K_M, Q8_0... see ``QUANT_TYPES``) then quantizes with llama.cpp.
    Warnings (NaN/Inf in a tensor, float16 overflow) go to ``warn``, by default to stderr;
    notes on what was left out (a multimodal checkpoint's vision tower) to ``note``, likewise.
    """
    out = Path(out).expanduser()
    if outtype is not None and outtype.lower() not in OUTTYPES:
        raise EdgesrmError(f"unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    if quant is not None:
        quant_type(quant)  # reject a bad type before any download or work
    check_destination(out, force)

    directory, name = resolve_source(str(src), revision)
    with _reading(f"config.json in {directory}"):
        config = _read_config(directory)
        family = family_for(config, directory)
    with _reading(f"the tokenizer files in {directory}"):
        vocab = load_vocab(directory, None if family.trim_vocab else family.vocab_size,
                           prefer_sentencepiece=family.prefer_sentencepiece)
    weights, left_out = family.select_weights(open_checkpoint(directory))
    if outtype is None:
        outtype = _lossless_type(weights) if quant else "f16"
    tensors = family.plan(weights, outtype.lower(), n_vocab=len(vocab))

    writer = gguf.GGUFWriter(None, family.name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    n_params = sum(math.prod(t.shape) for t in tensors)
    writer.add_size_label(gguf.size_label(n_params, n_params, 0, 0))
    family.write_hparams(writer)
    writer.add_file_type(_file_type(tensors))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.write(writer)
    if left_out:
        (note or _stderr_note)(left_out)

    size = sum(t.nbytes for t in tensors) + 2 * 2**20 * (1 + len(vocab) // 20000)
    with atomic_output(out, force=force, need_bytes=size * (2 if quant else 1)) as tmp:
        if quant is None:
            write_gguf(tmp, writer, tensors, progress=progress, warn=warn)
        else:
            unquantized = tmp.with_name(tmp.name + f".{outtype}")
            try:
                write_gguf(unquantized, writer, tensors, progress=progress, warn=warn)
                quantize_file(unquantized, tmp, quant)
            finally:
                unquantized.unlink(missing_ok=True)
    return out


def quantize(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    quant: str,
    *,
    force: bool = False,
    threads: int | None = None,
    allow_requantize: bool = False,
    imatrix: str | os.PathLike[str] | None = None,
    tensor_types: Sequence[str] = (),
) -> Path:
    """Quantize the GGUF ``src`` (a path or a model store name) to ``quant`` (see ``QUANT_TYPES``;
    with an ``imatrix`` file also ``NEEDS_IMATRIX``) with llama.cpp, into ``out``.

    ``imatrix``: an importance matrix GGUF (``edgesrm imatrix`` or llama.cpp's), checked to belong
    to ``src``. ``tensor_types``: ``PATTERN=TYPE`` overrides (``ffn_down=q4_k``), each a regular
    expression that must match a tensor of ``src``. Raises ``EdgesrmError`` for bad input.
    """
    from .. import imatrix as imatrix_file

    src_path, out = Path(src).expanduser(), Path(out).expanduser()
    if not src_path.exists():
        src_path = resolve_model(str(src))  # a store name, or one clear error
    quant_type(quant, imatrix=imatrix is not None)
    check_gguf(src_path)
    for source in [src_path] + ([Path(imatrix).expanduser()] if imatrix is not None else []):
        if out.exists() and source.exists() and os.path.samefile(out, source):
            raise EdgesrmError(f"the output would overwrite the input {source.name}; choose another output file")
    means, metadata = None, None
    if imatrix is not None:
        im = imatrix_file.read(Path(imatrix).expanduser())
        imatrix_file.check_against(im, src_path)
        means = im.means()
        # What llama-quantize records about the matrix it used (the same keys).
        metadata = {"quantize.imatrix.file": str(imatrix), "quantize.imatrix.entries_count": len(im.sums),
                    "quantize.imatrix.chunks_count": im.chunks}
        if im.datasets:
            metadata["quantize.imatrix.dataset"] = str(im.datasets[0])
    overrides = []
    if tensor_types:
        if str(quant).strip().upper() in ("F32", "F16", "BF16"):  # llama.cpp applies overrides to quantized types only
            raise EdgesrmError(f"tensor type overrides need a quantized type (e.g. Q4_K_M), not {quant.strip().upper()}")
        # Only the weights llama.cpp quantizes: 2-D and larger, named *weight, not norms or expert gates.
        names = [t.name for t in read_header(src_path).tensors if len(t.shape) >= 2 and t.name.endswith("weight")
                 and "_norm.weight" not in t.name and "ffn_gate_inp.weight" not in t.name]
        overrides = tensor_overrides(list(tensor_types), names, imatrix=imatrix is not None)
    with atomic_output(out, force=force, need_bytes=src_path.stat().st_size) as tmp:
        quantize_file(src_path, tmp, quant, threads=threads, allow_requantize=allow_requantize, imatrix=means,
                      overrides=overrides, metadata=metadata)
    return out


def _stderr_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """The last line of defence while reading config.json and the tokenizer: a value of a type
    or form that no check expected is one error naming the file, not a traceback."""
    try:
        yield
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
        raise EdgesrmError(f"cannot read {what}: a value of an unexpected type or form "
                           f"({type(exc).__name__}: {exc})") from None


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise EdgesrmError(f"no config.json in {directory}: is it a Hugging Face Transformers checkpoint?")
    return read_json_object(path, "a model config")


def _lossless_type(weights) -> str:
    """The narrowest output type that holds every weight exactly (the quantizer's input)."""
    dtypes = {ref.dtype for ref in weights.values()}
    if dtypes <= {"BF16"}:
        return "bf16"
    if dtypes <= {"F16"}:
        return "f16"
    return "f32"


def _file_type(tensors) -> gguf.LlamaFileType:
    from .archs.base import FILE_TYPES

    matrices = [t.qtype for t in tensors if len(t.shape) > 1]
    most = max(set(matrices), key=matrices.count) if matrices else gguf.GGMLQuantizationType.F32
    return FILE_TYPES[most]
