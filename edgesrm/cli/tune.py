"""``edgesrm tune``: the quantization that suits this machine, measured (the work is in edgesrm.tune)."""

from __future__ import annotations

import json

import click

from ..options import FiniteRange
from .common import progress_bar, refuse_with_data, terminate_as_interrupt, threads_option


@click.command()
@click.argument("model")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the recommended GGUF.")
@click.option("--memory", "memory_mb", required=True, type=FiniteRange(min=1.0, max=float(2**24)), metavar="MiB",
              help="The peak memory (MiB) the model may take while decoding --paths sequences.")
@click.option("--strategy", type=click.Choice(["sc", "cot"]), default="sc", show_default=True,
              help="sc: judge speed with --paths sequences at once; cot: with one.")
@click.option("--paths", type=click.IntRange(min=1, max=64), default=8, show_default=True,
              help="Sequences decoded at once for sc.")
@click.option("--types", "names", default=None, metavar="A,B,...",
              help="Candidates to try (default: Q4_0, IQ4_NL, Q4_K_S, Q4_K_M, Q4_K_M-Q4K, Q5_K_M, Q6_K, Q8_0; "
                   "with --imatrix also IQ3_XXS, Q3_K_S). Q4_K_M-Q4K is Q4_K_M with Q4_K where it puts Q6_K.")
@click.option("--imatrix", type=click.Path(dir_okay=False, exists=True), default=None,
              help="An importance matrix for MODEL (`edgesrm imatrix` or llama.cpp's, GGUF or imatrix.dat), "
                   "used by every candidate.")
@click.option("--traces", type=click.IntRange(min=1, max=1319), default=4, show_default=True,
              help="KL is measured on MODEL's reasoning on this many GSM8K test questions (cached).")
@click.option("--data", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Measure KL on this UTF-8 text file instead of reasoning traces.")
@threads_option
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
def tune(model: str, out: str, memory_mb: float, strategy: str, paths: int, names: str | None, imatrix: str | None,
         traces: int, data: str | None, threads: int | None, force: bool, as_json: bool) -> None:
    """Make candidate quantizations of MODEL (a path or a store name; best its f16/bf16 GGUF),
    measure each on this machine (file size, peak memory, decode speed at 1 and --paths
    sequences, KL divergence from MODEL) and write the recommended one: the fastest for the
    strategy among those that fit --memory and are no further from MODEL than Q4_K_M. Its
    measured speed profile is kept, so sc and auto use it.

    \b
    Examples:
      edgesrm tune qwen2.5-1.5b-f16.gguf -o qwen-tuned.gguf --memory 2048
      edgesrm tune qwen2.5-1.5b-f16.gguf -o qwen-tuned.gguf --memory 1500 --strategy cot --types Q4_0,Q4_K_M
    """
    refuse_with_data(data, "traces")
    from ..checks import read_text_file
    from ..tune import table, tune as run

    text = None if data is None else read_text_file(data)

    def say(message: str) -> None:
        click.echo(message, err=True)

    # kill: the candidates' directory and the measuring child go too; the bar counts the KL text's traces
    with terminate_as_interrupt(), progress_bar(traces, "traces") as advance:
        rows, best = run(model, out, memory_mb=memory_mb, strategy=strategy, paths=paths,
                         names=[n.strip() for n in names.split(",") if n.strip()] if names else None,
                         imatrix=imatrix, traces=traces, text=text, threads=threads, force=force, log=say,
                         on_trace=advance)
    width = paths if strategy == "sc" else 1
    if as_json:
        click.echo(json.dumps({"rows": [r.to_dict() for r in rows], "recommended": best.name}))
    else:
        click.echo("\n".join(table(rows, width, best)))
    click.echo(f"wrote {best.path} ({best.name}, {best.size_mb:,.0f} MiB): {best.speeds.get(width, 0):.1f} tokens/s "
               f"with {width} sequence{'s' if width > 1 else ''}, KL {best.kl_mean:.4f}", err=True)
