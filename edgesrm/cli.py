"""The ``edgesrm`` command line: ask a model, inspect a model file, check the machine."""

from __future__ import annotations

import json
import logging
import sys
import warnings

import click

from . import __version__
from .checks import INT32_MAX, MAX_CTX, MAX_SEQUENCES, MAX_THREADS, MAX_TOKENS, MIN_CTX
from .engine.backend import KV_TYPES
from .strategies import STRATEGIES
from .errors import EdgesrmError, EdgesrmWarning
from .options import FiniteRange, JsonObject, ReplyPrinter

MODEL_HELP = "GGUF model file. Default: the embedded SmolLM2-135M-Instruct (Q4_1)."


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, EdgesrmWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


class _EchoHandler(logging.Handler):
    """Writes a log record as one line on the current stderr (click's, so tests see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _show_progress_messages() -> None:
    """edgesrm's INFO log (what long first-run work is doing: a speed measurement, a download)
    goes to stderr as plain lines; the Python API leaves logging to the application."""
    logger = logging.getLogger("edgesrm")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.INFO)


class Cli(click.Group):
    """Turns user errors into one ``error: ...`` line and exit code 1, never a traceback;
    prints edgesrm's warnings as one ``warning: ...`` line each."""

    def invoke(self, ctx: click.Context):
        warnings.showwarning = _show_warning
        _show_progress_messages()
        try:
            return super().invoke(ctx)
        except EdgesrmError as exc:
            click.echo(f"error: {exc.cli or exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgesrm")
def cli() -> None:
    """Run small reasoning models on this machine, offline, with llama.cpp.

    \b
    Examples:
      edgesrm ask "A train leaves at 3pm and travels 2 hours. When does it arrive?"
      edgesrm ask --json --seed 1 "What is 17 * 23?"
      edgesrm info path/to/model.gguf
      edgesrm doctor
    """


STRATEGY_HELP = (
    "How to reason: plain (your question as it is, the model's whole reply: for writing, chat, anything "
    "without one right answer), direct (the final answer only, on one line, no reasoning), "
    "cot (one chain of thought, then the answer), budget (thinking capped by "
    "--budget-tokens/--deadline, extended with 'Wait'), sc (self-consistency over --n paths decoded in one "
    "batch, with early stopping), plan (plan, then solve), reflect (draft, critique, revise), auto (chosen "
    "from the budget and this machine's measured speed)."
)


@cli.command()
@click.argument("question")
@click.option("-m", "--model", type=click.Path(dir_okay=True), default=None, help=MODEL_HELP)
@click.option("-s", "--strategy", type=click.Choice(list(STRATEGIES)), default="cot", show_default=True,
              help=STRATEGY_HELP)
@click.option("-n", "--n", "n_paths", type=click.IntRange(min=1, max=MAX_SEQUENCES), default=8, show_default=True,
              help="Paths for sc (and the most auto may use).")
@click.option("--budget-tokens", type=click.IntRange(min=1, max=INT32_MAX), default=None,
              help="Most tokens to generate, all paths together.")
@click.option("--deadline", type=FiniteRange(min=0.0, min_open=True), default=None,
              help="Seconds: an answer is returned before this (the clock starts once the model is loaded).")
@click.option("--memory", type=FiniteRange(min=0.0, min_open=True), default=None,
              help="MB of memory to stay within: context, KV cache type, batch and paths are chosen to fit.")
@click.option("--max-tokens", type=click.IntRange(min=1, max=MAX_TOKENS), default=512, show_default=True,
              help="Most tokens per path, reasoning included.")
@click.option("--temperature", type=FiniteRange(min=0.0, max=100.0), default=0.6, show_default=True,
              help="Sampling temperature: 0 means greedy (always the most likely token), else 1e-6 to 100.")
@click.option("--top-p", type=FiniteRange(min=0.0, max=1.0, min_open=True), default=0.95, show_default=True,
              help="Nucleus sampling: keep the smallest set of tokens with this total probability.")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 2), default=None,
              help="Random seed; the same seed gives the same answer. Default: random (printed).")
@click.option("--system", default=None, help="System prompt. Default: a step-by-step instruction for "
              "models without a thinking mode (none with plain), none for thinking models.")
@click.option("--chat-template-kwargs", "template_kwargs", type=JsonObject(), default=None, metavar="JSON",
              help='Variables for the model\'s chat template, as llama-server takes them, e.g. '
              '\'{"enable_thinking": false}\' (Qwen3) or \'{"reasoning_effort": "low"}\'.')
@click.option("--parse-special", is_flag=True, help="Let control-token strings typed in QUESTION and --system "
              "(<|im_end|>...) act as control tokens. Default: they are text (trusted input only).")
@click.option("--weighted", is_flag=True, help="sc: weight votes by path confidence and stop unsure paths (DeepConf).")
@click.option("--no-early-stop", is_flag=True, help="sc: always finish all --n paths.")
@click.option("--waits", type=click.IntRange(min=0, max=MAX_TOKENS), default=1, show_default=True,
              help="budget: times 'Wait' may extend thinking that ends with budget left.")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=MIN_CTX, max=MAX_CTX), default=None,
              help="Context size in tokens, all paths together. Default: enough for the paths and --max-tokens.")
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
              help="CPU threads. Default: physical cores.")
@click.option("--gpu-layers", type=click.IntRange(min=0, max=INT32_MAX), default=None,
              help="Layers to offload to the GPU. Default: all when this build supports offload, else 0.")
@click.option("--kv-type", type=click.Choice(list(KV_TYPES)), default="f16", show_default=True,
              help="KV cache type; q8_0 and q4_0 halve or quarter its memory.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result on stdout instead of streaming.")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log on stderr.")
def ask(question: str, model: str | None, strategy: str, n_paths: int, budget_tokens: int | None,
        deadline: float | None, memory: float | None, max_tokens: int, temperature: float, top_p: float,
        seed: int | None, system: str | None, template_kwargs: dict | None, parse_special: bool, weighted: bool,
        no_early_stop: bool, waits: int,
        n_ctx: int | None, threads: int | None, gpu_layers: int | None, kv_type: str, as_json: bool,
        verbose: bool) -> None:
    """Answer QUESTION, streaming the model's reasoning (dimmed) and then its answer.

    QUESTION may be "-" to read it from standard input. With several paths (sc, auto) the
    chosen path is shown once the vote is over, and every path's answer, tokens and what ended
    it are listed on stderr. Anything given up or not honoured is said on stderr as "note: ...".

    Which strategy: questions with one right answer (arithmetic, facts, logic) reason best with
    cot (the default), or sc when a few seconds more buy a vote over several paths; direct when
    only the answer is wanted, fast; plain for everything else (a poem, an email, a summary):
    the question goes to the model as written and its whole reply is the answer.

    \b
    Examples:
      edgesrm ask "A farmer has 17 sheep and buys 5 more. How many sheep does he have now?"
      edgesrm ask -s plain "Write a haiku about the sea"
      edgesrm ask -s sc -n 8 --deadline 30 "What is 17 * 23?"
      edgesrm ask --json --seed 1 -m model.gguf "Is 91 prime?"
      echo "What is 2 + 2?" | edgesrm ask -
    """
    from .budget import Budget
    from .models import resolve_model, training_context
    from .runtime import load

    if question == "-":  # bytes that are not UTF-8 become U+FFFD, as in every text input
        question = sys.stdin.buffer.read().decode("utf-8", "replace")
    budget = Budget(max_tokens=budget_tokens, deadline_s=deadline)  # --memory is planned by load()
    paths = n_paths if strategy in ("sc", "auto") else 1
    if n_ctx is None:  # enough for the paths, but never past what the model was trained for
        n_ctx = min(1024 + paths * max_tokens, training_context(resolve_model(model)) or MAX_CTX, MAX_CTX)
    rt = load(model, n_ctx=n_ctx, threads=threads, gpu_layers=gpu_layers, kv_type=kv_type,
              max_sequences=paths, memory_mb=memory, verbose=verbose)
    stream = ReplyPrinter()

    with rt:
        result = rt.ask(question, strategy=strategy, n=n_paths, budget=budget, max_tokens=max_tokens,
                        temperature=temperature, top_p=top_p, seed=seed, system=system, early_stop=not no_early_stop,
                        weighted=weighted, waits=waits, on_text=None if as_json else stream,
                        chat_template_kwargs=template_kwargs, parse_special=parse_special)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    if result.answer:
        click.echo("")  # the answer itself has streamed
    else:
        click.echo(("\n\n" if stream.shown == "reasoning" else "") + "(no answer)")
    if len(result.paths) > 1:
        for p in result.paths:
            cut = {"tokens": ", reasoning cut by its token cap", "deadline": ", reasoning cut by the deadline"}.get(
                p.reasoning_ended, "")
            cut += "" if p.answer_complete or p.answer is None else ", answer cut off"
            click.echo(f"  path {p.index}: {p.answer!s:>12}  {p.tokens:4d}+{p.forced_tokens} tokens  "
                       f"{p.finish_reason}{cut}  vote {p.vote:g}", err=True)
        votes = ", ".join(f"{a}: {v:g}" for a, v in result.votes.items())
        click.echo(f"votes: {votes or 'none'}", err=True)
    late = " (deadline missed)" if result.deadline_missed else ""
    click.echo(
        f"[{result.strategy}: {result.completion_tokens} tokens + {result.forced_tokens} forced, "
        f"{result.tokens_per_s:.1f} tok/s, prompt {result.prompt_tokens} tokens"
        f"{f' ({result.cached_tokens} cached)' if result.cached_tokens else ''} in {result.prefill_s:.2f} s, "
        f"{result.total_s:.2f} s in all{late}, {result.ending()}, seed {result.seed}]",
        err=True,
    )


@cli.command(name="eval")
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
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
              help="CPU threads. Default: physical cores.")
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

    from .budget import Budget
    from .eval import evaluate, find_dataset, load_items, plot
    from .models import resolve_model, training_context
    from .runtime import load

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


@cli.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(model: str | None, as_json: bool) -> None:
    """Describe a GGUF model file (default: the embedded model) without loading it: architecture,
    parameters, quantization, size, context length, chat template and what it accepts (system
    role, thinking switch).

    \b
    Examples:
      edgesrm info
      edgesrm info path/to/model.gguf
      edgesrm info --json path/to/model.gguf
    """
    from .info import model_info

    mi = model_info(model)
    if as_json:
        click.echo(json.dumps(mi.to_dict()))
        return
    rows = [
        ("file", mi.path),
        ("name", mi.name),
        ("architecture", mi.architecture),
        ("parameters", f"{mi.parameters:,} ({mi.parameters / 1e9:.2f} B)"),
        ("quantization", mi.quantization),
        ("file size", f"{mi.file_bytes / 2**20:,.1f} MiB"),
        ("context length", f"{mi.context_length:,}" if mi.context_length else "unknown"),
        ("vocabulary", f"{mi.vocab_size:,} tokens"),
        ("chat template", "yes" if mi.chat_template else "no (ChatML is used)"),
        ("thinking mode", "yes (<think>...</think>)" if mi.thinking else "no (step-by-step prompt)"),
    ]
    if mi.template_error:
        rows.append(("template error", mi.template_error))
    elif mi.chat_template:
        rows += [
            ("system role", "yes" if mi.system_role else "no (system text joins the first user turn)"),
            ("turns", "strictly alternating user/assistant" if mi.alternating_roles else "any order"),
            ("past reasoning", "kept in the prompt" if mi.reasoning_in_history else "dropped by the template"),
        ]
    for key, value in rows:
        click.echo(f"{key:<15} {value}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor(as_json: bool) -> None:
    """Report the llama.cpp backend compiled in, CPU features, GPU offload, threads and memory.

    To rebuild llama-cpp-python for a GPU (CUDA, Metal, Vulkan) or OpenBLAS, run
    `python native/build_llama_cpp.py` from a checkout of edgesrm.

    \b
    Examples:
      edgesrm doctor
      edgesrm doctor --json
    """
    from .doctor import doctor_report

    report = doctor_report()
    if as_json:
        click.echo(json.dumps(report))
        return
    for key, value in report.items():
        if isinstance(value, list):
            value = " ".join(value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        elif value is None:
            value = "not downloaded yet (fetched once by the first `edgesrm ask` without --model)"
        click.echo(f"{key.replace('_', ' '):<24} {value}")


from .chat_command import chat as chat_command  # noqa: E402
from .convert.cli import convert as convert_command, quantize as quantize_command  # noqa: E402
from .serve_command import serve as serve_command  # noqa: E402

cli.add_command(chat_command)
cli.add_command(serve_command)
cli.add_command(convert_command)
cli.add_command(quantize_command)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def main() -> None:
    """The console script: click's usage errors become one ``error:`` line (exit code 2), like
    every other error, with the command's ``--help`` named."""
    try:
        code = cli.main(prog_name="edgesrm", standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:  # bare `edgesrm`: the help, as a help request
        click.echo(exc.format_message())
        sys.exit(0)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "edgesrm"
        click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
