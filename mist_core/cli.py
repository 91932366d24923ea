"""The `mist-bench` console command (filled in as the subcommands land)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("mist-bench: not yet implemented", file=sys.stderr)
    return 2
