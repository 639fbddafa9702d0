"""``edgesrm imatrix``: an importance matrix for quantization (the work is in edgesrm.imatrix)."""

from __future__ import annotations

import click

from .common import refuse_with_data, terminate_as_interrupt, threads_option


@click.command()
@click.argument("model")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The imatrix GGUF to write (llama.cpp's format: llama-quantize --imatrix reads it too).")
@click.option("--traces", type=click.IntRange(min=1, max=256), default=32, show_default=True,
              help="Calibrate on the model's own chains of thought for this many GSM8K train questions.")
@click.option("--data", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Calibrate on this UTF-8 text file instead of reasoning traces. Control-token text in it "
                   "(<|im_start|>...) becomes those tokens, as llama-imatrix does with --parse-special.")
@click.option("--chunk", "n_ctx", type=click.IntRange(min=32, max=8192), default=512, show_default=True,
              help="Tokens per chunk (llama.cpp's default).")
@click.option("--max-tokens", type=click.IntRange(min=16, max=4096), default=384, show_default=True,
              help="Tokens per reasoning trace.")
@threads_option
@click.option("--process-output", is_flag=True, help="Also collect output.weight (as llama-imatrix --process-output).")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def imatrix(model: str, out: str, traces: int, data: str | None, n_ctx: int, max_tokens: int, threads: int | None,
            process_output: bool, force: bool, no_progress: bool) -> None:
    """Compute an importance matrix for MODEL (a path or a store name): how large each input
    column of every weight matrix runs on calibration text, which quantizing with --imatrix uses
    to keep precision where it matters (and which the IQ1, IQ2, IQ3_XXS, IQ3_XS and Q2_K_S types need).

    By default the calibration text is MODEL's own reasoning on GSM8K train questions, so the
    matrix weighs what the model does when it reasons; --data takes any text instead. Compute it
    on the highest-precision file you have (f16/bf16), then quantize that file.

    \b
    Examples:
      edgesrm imatrix qwen2.5-1.5b-f16.gguf -o qwen.imatrix.gguf
      edgesrm imatrix qwen2.5-1.5b-f16.gguf -o qwen.imatrix.gguf --data wiki.txt
      edgesrm quantize qwen2.5-1.5b-f16.gguf qwen-iq3.gguf --quant IQ3_XXS --imatrix qwen.imatrix.gguf
    """
    from ..imatrix import make

    refuse_with_data(data, "traces", "max_tokens")

    def say(message: str) -> None:
        click.echo(message, err=True)

    with terminate_as_interrupt():
        im = make(model, out, traces=traces, data=data, n_ctx=n_ctx, threads=threads, max_tokens=max_tokens,
                  force=force, process_output=process_output, progress=not no_progress, log=say)
    click.echo(f"wrote {out}: {len(im.sums)} weights, {im.chunks} chunk{'s' * (im.chunks != 1)} of {im.chunk_size} "
               "tokens", err=True)
