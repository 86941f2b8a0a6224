"""Dispatch `python -m bench [name ...] [--] [module args]` to bench/<name>.py main(argv); no name runs every module."""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


SLOW = {"perf"}


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    k = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, args = argv[:k], argv[k + 1:] if argv[k:k + 1] == ["--"] else argv[k:]
    if not names and args[:1] in (["-h"], ["--help"]):
        print("usage: python -m bench [" + "|".join(available()) + " ...] [-- module args]")
        return 0
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    rc = 0
    for name in names or [n for n in available() if n not in SLOW]:
        print(f"== bench {name}", flush=True)
        rc |= int(importlib.import_module(f"bench.{name}").main(args) or 0)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
