"""``edgesrm list``, ``show`` and ``rm``: the models in the local store (edgesrm.store)."""

from __future__ import annotations

import json

import click

from .info import echo_rows, info_rows


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects with name, quant, size "
              "(bytes), path and source.")
def list_models(as_json: bool) -> None:
    """List the models in the store (edgesrm pull adds them).

    \b
    Examples:
      edgesrm list
      edgesrm list --json
    """
    from ..store import ModelStore

    store = ModelStore()
    entries = store.entries()
    if as_json:
        click.echo(json.dumps([{"name": e.name, "quant": e.quant, "size": e.size, "path": e.path,
                                "source": e.source} for e in entries], ensure_ascii=False))
        return
    if not entries:
        click.echo(f"no models in the store ({store.home}); fetch one with `edgesrm pull`", err=True)
        return
    width = max(len(e.name) for e in entries)
    click.echo(f"{'NAME':<{width}}  {'QUANT':<8}  {'SIZE':>12}  SOURCE")
    for e in entries:
        gone = "  (file missing: pull it again or rm it)" if e.missing else ""
        click.echo(f"{e.name:<{width}}  {e.quant or '?':<8}  {e.size / 2**20:>8,.1f} MiB  {e.source}{gone}")


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the store's entry and what info reads.")
def show(name: str, as_json: bool) -> None:
    """Describe the store's model NAME: what `edgesrm info` prints, plus where it came from.

    \b
    Examples:
      edgesrm show qwen3-0.6b:q4_k_m
      edgesrm show --json qwen3-0.6b
    """
    from ..info import model_info
    from ..store import ModelStore

    from ..errors import EdgesrmError

    entry = ModelStore().require(name)
    if entry.missing:
        raise EdgesrmError(f"the store's model {entry.name!r} is gone from {entry.path}; pull it again, "
                           f"or `edgesrm rm {entry.name}`")
    mi = model_info(entry.path)
    if as_json:
        click.echo(json.dumps({"store": entry.to_dict(), "info": mi.to_dict()}, ensure_ascii=False))
        return
    rows = [("store name", entry.name), ("source", entry.source)]
    if entry.revision:
        rows.append(("revision", entry.revision))
    rows += [("license", entry.license or "not stated"), ("sha256", entry.sha256 or "not recorded"),
             ("added", entry.added)]
    if len(entry.files) > 1:
        rows.append(("files", f"{len(entry.files)} parts"))
    echo_rows(rows + info_rows(mi))


@click.command()
@click.argument("name")
def rm(name: str) -> None:
    """Remove NAME from the store, deleting the files edgesrm created for it (a download or a
    conversion) unless another store entry uses them; a file you registered is never deleted.

    \b
    Examples:
      edgesrm rm qwen3-0.6b:q4_k_m
    """
    from ..store import ModelStore

    entry, deleted, users = ModelStore().remove(name)
    freed = len(deleted)
    if deleted:
        click.echo(f"removed {entry.name}; deleted {freed} file{'s' if freed > 1 else ''} ({entry.size / 2**20:,.1f} MiB)")
    elif users:
        click.echo(f"removed {entry.name}; its file is kept: {', '.join(users)} uses it")
    elif entry.missing:
        click.echo(f"removed {entry.name}; its file was already gone")
    else:
        click.echo(f"removed {entry.name}; its file is yours and was left in place: {entry.path}")
