"""Rewrites tests/golden/<case>.json from what the workflow templates render now.

Run from the repository root after an intended change to a template or to the renderer:
    .venv/bin/python scripts/update_golden.py          # rewrite the files that differ
    .venv/bin/python scripts/update_golden.py --check  # only list them (exit 1 if any)
then review `git diff tests/golden`. The golden-file test never writes these files itself, so
updating them is always this separate, explicit step.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.unit.test_templates import CASES, GOLDEN, golden_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any golden file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name in sorted(CASES):
        path = GOLDEN / f"{name}.json"
        text = golden_text(name)
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    verb = "out of date" if args.check else "rewritten"
    for path in stale:
        print(f"{verb}: {path.relative_to(ROOT)}")
    if not stale:
        print("golden files up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
