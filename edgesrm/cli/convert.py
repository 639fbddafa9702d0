"""``edgesrm convert`` and ``edgesrm quantize``: Hugging Face checkpoints to GGUF, GGUF to a
quantized GGUF (the work is in edgesrm.convert)."""

from __future__ import annotations

import click

from ..convert.archs import FAMILIES, OUTTYPES
from ..convert.quantize import NEEDS_IMATRIX, QUANT_TYPES
from .common import terminate_as_interrupt, threads_option

QUANT_HELP = f"Quantize with llama.cpp: {', '.join(QUANT_TYPES)} (case-insensitive)."


@click.command(epilog=f"Supported architectures: {', '.join(FAMILIES)}.")
@click.argument("src")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The GGUF file to write.")
@click.option("--outtype", type=click.Choice(list(OUTTYPES), case_sensitive=False), default=None,
              help="How to store the weights: f32, f16, bf16 or q8_0. Default: f16; with --quant, "
                   "the checkpoint's own type (the quantizer's exact input).")
@click.option("--quant", default=None, metavar="TYPE", help=QUANT_HELP)
@click.option("--revision", default=None, help="Branch, tag or commit of a Hugging Face repo.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def convert(src: str, out: str, outtype: str | None, quant: str | None, revision: str | None, force: bool,
            no_progress: bool) -> None:
    """Convert a Hugging Face checkpoint to GGUF, without PyTorch.

    SRC is a local directory (config.json, safetensors weights, tokenizer files) or a
    Hugging Face repo id, fetched into the standard cache (only the files needed;
    HF_HUB_OFFLINE=1 uses the cache only).

    \b
    Examples:
      edgesrm convert HuggingFaceTB/SmolLM2-135M-Instruct -o smollm2.gguf --quant Q4_K_M
      edgesrm convert ./Qwen3-0.6B -o qwen3-0.6b-f16.gguf
    """
    from ..convert import convert as run

    with terminate_as_interrupt():
        path = run(src, out, outtype=outtype, quant=quant, revision=revision, force=force, progress=not no_progress)
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:,.1f} MiB)", err=True)


@click.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--quant", required=True, metavar="TYPE",
              help=QUANT_HELP[:-1] + f"; with --imatrix also {', '.join(NEEDS_IMATRIX)}.")
@click.option("--imatrix", "imatrix", type=click.Path(dir_okay=False), default=None,
              help="An importance matrix for SRC (`edgesrm imatrix`, or llama.cpp's llama-imatrix; GGUF or "
                   "the older imatrix.dat): "
                   "precision goes where the activations are. Needed by the IQ1, IQ2, IQ3_XXS, IQ3_XS and Q2_K_S types.")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="PATTERN=TYPE",
              help="Give the tensors whose name matches the regular expression PATTERN the ggml type TYPE "
                   "(e.g. ffn_down=q4_k, 'blk\\.(0|1)\\.'=q8_0); repeatable, the first match wins.")
@threads_option
@click.option("--allow-requantize", is_flag=True, help="Accept an already quantized input (loses more quality).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def quantize(src: str, out: str, quant: str, imatrix: str | None, tensor_types: tuple[str, ...], threads: int | None,
             allow_requantize: bool, force: bool) -> None:
    """Quantize the GGUF file SRC (a path or a store name) into OUT with llama.cpp's quantizer.

    \b
    Examples:
      edgesrm quantize model-f16.gguf model-q4_k_m.gguf --quant Q4_K_M
      edgesrm quantize qwen3-0.6b:f16 qwen3-0.6b-q4_0.gguf --quant Q4_0
      edgesrm imatrix model-f16.gguf -o model.imatrix.gguf
      edgesrm quantize model-f16.gguf model-iq3.gguf --quant IQ3_XXS --imatrix model.imatrix.gguf
      edgesrm quantize model-f16.gguf model-q4k.gguf --quant Q4_K_M --tensor-type ffn_down=q4_k
    """
    from ..convert import quantize as run

    with terminate_as_interrupt():
        path = run(src, out, quant, force=force, threads=threads, allow_requantize=allow_requantize,
                   imatrix=imatrix, tensor_types=tensor_types)
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:,.1f} MiB)", err=True)


