"""``edgesrm eval``: accuracy, latency and tokens of strategies on a dataset (the work is in edgesrm.eval)."""

from __future__ import annotations

import json
import sys

import click

from ..checks import INT32_MAX, MAX_CTX, MAX_SEQUENCES, MAX_TOKENS, MIN_CTX
from ..options import FiniteRange
from ..strategies import STRATEGIES
from .common import MODEL_HELP, threads_option


@click.command(name="eval")
@click.option("-d", "--dataset", "--data", "dataset", default="gsm8k", show_default=True,
              help="gsm8k (GSM8K test, 1,319 questions) or math500 (MATH-500, LaTeX answers), both shipped with "
              "edgesrm (EDGESRM_DATA=DIR reads DIR/NAME/test.jsonl instead), or a JSONL file with one "
              "question/answer object per line.")
@click.option("--limit", type=click.IntRange(min=1, max=INT32_MAX), default=None, help="Only the first N questions.")
@click.option("-s", "--strategy", "strategies", type=click.Choice(list(STRATEGIES)), multiple=True,
              help="Strategy to evaluate; repeat to compare several. Default: cot.")
@click.option("-m", "--model", type=click.Path(dir_okay=True), default=None, help=MODEL_HELP)
@click.option("-n", "--n", "n_paths", type=click.IntRange(min=1, max=MAX_SEQUENCES), default=8, show_default=True,
              help="Paths for sc.")
@click.option("--budget-tokens", type=click.IntRange(min=1, max=INT32_MAX), default=None,
              help="Token budget per question.")
@click.option("--deadline", type=FiniteRange(min=0.0, min_open=True), default=None,
              help="Seconds per question.")
@click.option("--max-tokens", type=click.IntRange(min=1, max=MAX_TOKENS), default=512, show_default=True,
              help="Most tokens per path.")
@click.option("--temperature", type=FiniteRange(min=0.0, max=100.0), default=0.6, show_default=True,
              help="Sampling temperature: 0 means greedy, else 1e-6 to 100.")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 2), default=0, show_default=True,
              help="Base seed, as for ask; question i uses seed + i (wrapping around), so runs are reproducible.")
@click.option("--weighted", is_flag=True, help="sc: confidence-weighted votes (DeepConf).")
@click.option("--no-early-stop", is_flag=True, help="sc: always finish all --n paths.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default="eval-results", show_default=True,
              help="Folder for the per-question JSONL rows, summary.json and accuracy-latency.png.")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=MIN_CTX, max=MAX_CTX), default=None,
              help="Context size in tokens, all paths together. Default: enough for the paths and --max-tokens.")
@threads_option
def evaluate_command(dataset: str, limit: int | None, strategies: tuple[str, ...], model: str | None, n_paths: int,
                     budget_tokens: int | None, deadline: float | None, max_tokens: int, temperature: float,
                     seed: int, weighted: bool, no_early_stop: bool, out_dir: str, n_ctx: int | None,
                     threads: int | None) -> None:
    """Measure accuracy, latency and tokens of strategies on a dataset (default: GSM8K test).

    Progress goes to stderr: a bar in a terminal, else one line per question
    ("[3/50] cot q2: 18 (ok) 12.4 s"). GSM8K test and MATH-500 ship with edgesrm, so this
    works offline, from any folder.

    \b
    Examples:
      edgesrm eval --limit 50 -s cot -s sc --model qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
      edgesrm eval -d math500 --limit 20 --max-tokens 1024
      edgesrm eval --dataset my-questions.jsonl -s direct
    """
    from pathlib import Path

    from ..budget import Budget
    from ..eval import evaluate, find_dataset, load_items, plot
    from ..models import resolve_model, training_context
    from ..runtime import load

    strategies = strategies or ("cot",)
    items = load_items(find_dataset(dataset), limit)
    out = Path(out_dir)
    widest = n_paths if any(s in ("sc", "auto") for s in strategies) else 1
    if n_ctx is None:  # enough for the paths, but never past what the model was trained for
        n_ctx = min(1024 + widest * max_tokens, training_context(resolve_model(model)) or MAX_CTX, MAX_CTX)
    rt = load(model, n_ctx=n_ctx, threads=threads, max_sequences=widest)
    budget = Budget(max_tokens=budget_tokens, deadline_s=deadline)
    summaries = []
    try:
        terminal = sys.stderr.isatty()
    except ValueError:  # a closed stream
        terminal = False

    def line(strategy: str, done: int, row: dict) -> None:
        """One line per question when stderr is not a terminal (a log, CI, a pipe): no bar to draw."""
        predicted = "no answer" if row["predicted"] is None else row["predicted"]
        verdict = "ok" if row["correct"] else f"wrong, gold {row['gold']}"
        click.echo(f"[{done}/{len(items)}] {strategy} q{row['id']}: {predicted} ({verdict}) "
                   f"{row['latency_s']:.1f} s", err=True)

    with rt:
        for strategy in strategies:
            options = dict(n=n_paths, budget=budget, max_tokens=max_tokens, temperature=temperature, seed=seed,
                           weighted=weighted, early_stop=not no_early_stop)
            if terminal:
                with click.progressbar(length=len(items), label=f"{strategy:>8}", file=sys.stderr) as bar:
                    summary = evaluate(rt, items, strategy, out / f"{strategy}.jsonl",
                                       on_item=lambda row: bar.update(1), **options)
            else:
                done = iter(range(1, len(items) + 1))
                summary = evaluate(rt, items, strategy, out / f"{strategy}.jsonl",
                                   on_item=lambda row, s=strategy: line(s, next(done), row), **options)
            summaries.append(summary)
            click.echo(
                f"{strategy:>8}: accuracy {100 * summary.accuracy:5.1f}%  latency mean {summary.mean_latency_s:6.2f} s  "
                f"p95 {summary.p95_latency_s:6.2f} s  tokens {summary.mean_tokens:7.1f}  "
                f"deadline misses {summary.deadline_misses}"
            )
    (out / "summary.json").write_text(json.dumps([s.to_dict() for s in summaries], indent=1))
    image = plot(summaries, out / "accuracy-latency.png")
    click.echo(f"rows and summary in {out}/" + (f", plot in {image}" if image else
                                                 " (pip install 'edgesrm[plot]' for the plot)"), err=True)
