"""`python -m gate.conformance --list [--markdown]`: the cases, without running them
(spec/CONFORMANCE.md's list is this output with --markdown). `gate conformance` runs them."""

from __future__ import annotations

import sys

from gate.conformance.catalog import all_cases
from gate.conformance.report import as_markdown, listing


def main(argv: list[str]) -> int:
    if "--list" not in argv:
        print("usage: python -m gate.conformance --list [--markdown]", file=sys.stderr)
        return 2
    cases = all_cases()
    print(as_markdown(cases) if "--markdown" in argv else listing(cases), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
