"""``edgesrm info``: a GGUF model file described without loading it (the work is in edgesrm.info)."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(model: str | None, as_json: bool) -> None:
    """Describe a GGUF model (a file or a store name; default: the embedded model) without loading it: architecture,
    parameters, quantization, size, context length, chat template and what it accepts (system
    role, thinking switch).

    \b
    Examples:
      edgesrm info
      edgesrm info path/to/model.gguf
      edgesrm info qwen3-0.6b:q4_k_m
      edgesrm info --json path/to/model.gguf
    """
    from ..info import model_info

    mi = model_info(model)
    if as_json:
        click.echo(json.dumps(mi.to_dict()))
        return
    echo_rows(info_rows(mi))


def info_rows(mi) -> list[tuple[str, str]]:
    """``edgesrm info``'s lines for a ``ModelInfo`` (``show`` prints them too)."""
    rows = [
        ("file", mi.path),
        ("name", mi.name),
        ("architecture", mi.architecture),
        ("parameters", f"{mi.parameters:,} ({mi.parameters / 1e9:.2f} B)" if mi.parameters >= 10**8
         else f"{mi.parameters:,} ({mi.parameters / 1e6:.1f} M)"),
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
    return rows


def echo_rows(rows: list[tuple[str, str]]) -> None:
    for key, value in rows:
        click.echo(f"{key:<15} {value}")
