"""``python -m tests.portability [--write]``: list unguarded uses; rewrite the OS table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.portability.checker import check
from tests.portability.table import TABLE, render

ROOT = Path(__file__).resolve().parent.parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.portability", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"rewrite {TABLE}")
    args = parser.parse_args(argv)
    reports = check(ROOT)
    violations = [v for r in reports for v in r.violations]
    for violation in violations:
        print(violation)
    if args.write:
        (ROOT / TABLE).write_text(render(reports))
        print(f"wrote {TABLE}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
