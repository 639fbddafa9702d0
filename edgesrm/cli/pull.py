"""``edgesrm pull``: fetch a model once and name it in the local store (the work is in edgesrm.pull)."""

from __future__ import annotations

import click


@click.command()
@click.argument("ref")
@click.option("--name", default=None, help="Name in the store. Default: the repo's name and the quant, "
              "like qwen3-0.6b:q4_k_m.")
@click.option("-q", "--quant", default=None, help="Quant to fetch from a GGUF repo (same as REF:QUANT), or to "
              "quantize a Transformers checkpoint to. Default: Q4_K_M, else the smallest file of at least 4 bits.")
@click.option("--revision", default=None, help="Branch, tag or commit of the Hub repo. Default: main.")
@click.option("--copy", is_flag=True, help="Local file: copy it into the store (rm then deletes the copy). "
              "Default: register it where it is (rm never deletes it).")
def pull(ref: str, name: str | None, quant: str | None, revision: str | None, copy: bool) -> None:
    """Fetch a model into the local store, check it, and give it a name that --model takes.

    REF is a GGUF repo on the Hugging Face Hub (user/repo, or user/repo:QUANT), a repo with a
    Transformers checkpoint (safetensors; converted and quantized here), a short name of a
    well-known model, or a local .gguf file.

    Files are checked against the Hub's sha256 and read as GGUF before they are registered.
    Downloads land in the Hugging Face cache (shared with other tools). HF_TOKEN logs in,
    HF_ENDPOINT names another Hub, HF_HUB_OFFLINE=1 uses only what is already downloaded.
    The store's index is under EDGESRM_HOME (default: this platform's data directory).

    \b
    Known names:
    {known}

    \b
    Examples:
      edgesrm pull qwen3-0.6b
      edgesrm pull bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF:Q4_K_M
      edgesrm pull unsloth/Qwen3-1.7B-GGUF:q8_0 --name qwen3-1.7b-q8
      edgesrm pull HuggingFaceTB/SmolLM2-360M-Instruct --quant Q4_K_M
      edgesrm pull ./my-model.gguf --name mine
      edgesrm ask -m qwen3-0.6b "What is 17 * 23?"
    """
    import logging

    from ..pull import pull as pull_model

    # huggingface-hub's own warnings (a cache file it ignores, a resumed connection) would add lines
    # to pull's one result or one error; what matters is said by edgesrm.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    entry = pull_model(ref, name=name, quant=quant, revision=revision, copy=copy)
    where = f" @ {entry.revision[:12]}" if entry.revision else ""
    source = entry.source if entry.source != "file" else entry.path
    click.echo(f"{entry.name}  {entry.quant or '?'}  {entry.size / 2**20:,.1f} MiB  from {source}{where}")
    click.echo(f"use it: edgesrm ask -m {entry.name} \"...\"", err=True)


def _known_names() -> str:
    from ..pull import known_models

    return "\n    ".join(f"{k:<30} {v['repo']}" for k, v in known_models().items())


pull.help = pull.help.replace("{known}", _known_names())
