"""``edgesrm quality``: how far a quantized model's next-token distributions are from a
reference's (the work is in edgesrm.quality)."""

from __future__ import annotations

import json
import sys

import click

from .common import progress_bar, refuse_with_data, terminate_as_interrupt, threads_option


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--reference", "-r", required=True,
              help="The reference GGUF (a path or a store name): the f16/bf16 file, or the most precise one at hand.")
@click.option("--data", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Compare on this UTF-8 text file instead of reasoning traces.")
@click.option("--traces", type=click.IntRange(min=1, max=1319), default=16, show_default=True,
              help="Compare on the reference's chains of thought for this many GSM8K test questions (cached).")
@click.option("--chunk", "n_ctx", type=click.IntRange(min=32, max=8192), default=512, show_default=True,
              help="Tokens per chunk; the second half of each is scored.")
@click.option("--chunks", "max_chunks", type=click.IntRange(min=1, max=1_000_000), default=None,
              help="Compare on at most this many chunks (as llama-perplexity --chunks). Default: all; the "
                   "reference's logits take about 150 MiB of temporary disk per chunk for a 150k vocabulary.")
@click.option("--gsm8k", "gsm8k", type=click.IntRange(min=1, max=1319), default=None,
              help="Also answer this many GSM8K test questions with cot (each MODEL and the reference) and "
                   "report accuracy: minutes per model on a laptop.")
@click.option("--max-tokens", type=click.IntRange(min=16, max=4096), default=384, show_default=True,
              help="Tokens per answer with --gsm8k.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per MODEL, one per line.")
def quality(models: tuple[str, ...], reference: str, data: str | None, traces: int, n_ctx: int,
            max_chunks: int | None, gsm8k: int | None, max_tokens: int, threads: int | None, as_json: bool) -> None:
    """Measure how much each MODEL (a path or a store name) departs from --reference on the same
    text: mean and 99th-percentile KL divergence (nats per token), top-1 agreement and perplexity,
    as llama.cpp's llama-perplexity --kl-divergence reports them. With several MODELs the
    reference decodes the text once.

    \b
    Examples:
      edgesrm quality qwen-q4_k_m.gguf --reference qwen-f16.gguf
      edgesrm quality qwen-q3_k_s.gguf qwen-iq3_xxs.gguf -r qwen-f16.gguf --data wiki.txt --json
      edgesrm quality qwen-q3_k_s.gguf -r qwen-f16.gguf --gsm8k 50     # and accuracy on 50 questions
    """
    refuse_with_data(data, "traces")
    from dataclasses import replace

    from ..checks import read_text_file
    from ..quality import compare_many, gsm8k_accuracy, reasoning_text

    with terminate_as_interrupt():  # kill: the reference logits' temporary file goes too
        if data is not None:
            text = read_text_file(data)
        else:
            click.echo(f"text: the reference's reasoning on {traces} GSM8K test questions (generated once, cached)", err=True)
            with progress_bar(traces, "traces") as advance:
                text = reasoning_text(reference, traces, threads=threads, on_trace=advance)
        with progress_bar(None, "chunks") as advance:
            results = compare_many(models, reference, text, n_ctx=n_ctx, threads=threads, max_chunks=max_chunks,
                                   on_chunk=lambda done, total: advance(1, total))
        if gsm8k is not None:
            click.echo(f"GSM8K: answering {gsm8k} test questions with cot, reference first", err=True)
            ref_accuracy = gsm8k_accuracy(reference, gsm8k, max_tokens=max_tokens, threads=threads)
            results = [replace(r, gsm8k=gsm8k_accuracy(m, gsm8k, max_tokens=max_tokens, threads=threads),
                               gsm8k_reference=ref_accuracy) for m, r in zip(models, results)]
    for result in results:
        if as_json:
            click.echo(json.dumps(result.to_dict()))  # one object per line, MODEL's order
            continue
        if len(results) > 1:
            click.echo(f"{result.model}:")
        for line in result.lines():
            click.echo(("  " if len(results) > 1 else "") + line)
    sys.stdout.flush()
