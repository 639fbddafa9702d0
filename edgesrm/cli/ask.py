"""``edgesrm ask``: one question, answered with a reasoning strategy."""

from __future__ import annotations

import json
import sys

import click

from ..checks import INT32_MAX, MAX_CTX, MAX_SEQUENCES, MAX_TOKENS, MIN_CTX
from ..engine.backend import KV_TYPES
from ..options import FiniteRange, JsonObject, ReplyPrinter
from ..strategies import STRATEGIES
from .common import MODEL_HELP, STRATEGY_HELP, threads_option


@click.command()
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
@threads_option
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
    from ..budget import Budget
    from ..models import resolve_model, training_context
    from ..runtime import load

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
    if as_json:
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    if result.answer:
        click.echo("")  # the answer itself has streamed
    else:
        click.echo(("\n\n" if stream.shown == "reasoning" else "") + "(no answer)")
    for note in result.notes:  # after the streamed text's last line, not glued to it on a terminal
        click.echo(f"note: {note}", err=True)
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
