"""``edgesrm doctor``: the llama.cpp build and this machine (the work is in edgesrm.doctor)."""

from __future__ import annotations

import json

import click


@click.command()
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
    from ..doctor import doctor_report

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
