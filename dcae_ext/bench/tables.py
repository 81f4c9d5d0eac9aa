"""Regenerate the benchmark tables in Markdown files from the committed result files.

    python -m dcae_ext.bench.tables            # rewrite README.md and benchmarks/README.md
    python -m dcae_ext.bench.tables --check    # exit 1 with a diff when a table is out of date

A table lives between `<!-- bench-table KEY=VALUE ... -->` and `<!-- /bench-table -->`:
  kind=full|summary   one row per case, or one row per op group (ranges)
  results=PATH        the JSONL file, relative to the Markdown file
  dtype=A,B           only these dtypes (default: all)
  runs=full|quick|all only full runs (default), only --quick runs, or both
The latest record of each (op, impl, dtype, shape) is shown.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path

from dcae_ext.bench import report
from dcae_ext.bench.records import latest, read_records
from dcae_ext.files import atomic_write

BLOCK = re.compile(r"(<!-- bench-table (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /bench-table -->)", re.DOTALL)
DEFAULT_FILES = ("README.md", os.path.join("benchmarks", "README.md"))


def _parse_spec(spec: str) -> dict:
    options = dict(item.split("=", 1) for item in spec.split())
    unknown = set(options) - {"kind", "results", "dtype", "runs"}
    if unknown or options.get("kind") not in ("full", "summary") or "results" not in options:
        raise ValueError(f"bench-table marker {spec!r}: needs kind=full|summary and results=PATH; "
                         f"optional dtype=, runs= (unknown: {', '.join(sorted(unknown)) or 'none'})")
    return options


def select(records: list[dict], dtype: str | None = None, runs: str = "full") -> list[dict]:
    chosen = latest(records)
    if runs != "all":
        chosen = [r for r in chosen if bool(r.get("quick")) == (runs == "quick")]
    if dtype:
        chosen = [r for r in chosen if r["dtype"] in dtype.split(",")]
    return chosen


def render(records: list[dict], kind: str) -> str:
    """The Markdown block: where it was measured, the table, the note."""
    if not records:
        return "(no records)\n"
    setups = sorted({f"{r['device_name']} ({r['device']}), torch {r['torch']}, cuda {r['cuda']}" for r in records})
    if kind == "full":
        table = report.markdown(report.table_header(records), report.table_rows(records))
        note = report.table_note(records)
    else:
        table = report.markdown(report.summary_header(records), report.summary_rows(records))
        note = report.table_note(records, report.SUMMARY_NOTE)
    return "; ".join(setups) + "\n\n" + table + "\n\n" + note + "\n"


def regenerate(markdown_text: str, base_dir: str) -> str:
    def replace(match):
        options = _parse_spec(match["spec"])
        records = select(read_records(os.path.join(base_dir, options["results"])), options.get("dtype"),
                         options.get("runs", "full"))
        return match.group(1) + render(records, options["kind"]) + match.group(4)

    return BLOCK.sub(replace, markdown_text)


def update(path: str, check: bool) -> bool:
    """Regenerate the tables of `path`; True when they were current. With check, write nothing."""
    with open(path, encoding="utf-8") as stream:
        current = stream.read()
    fresh = regenerate(current, os.path.dirname(os.path.abspath(path)))
    if fresh == current:
        return True
    if check:
        sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True), path,
                                                   path + " (regenerated)"))
    else:
        atomic_write(path, lambda tmp: Path(tmp).write_text(fresh, encoding="utf-8"))
        print(f"updated {path}")
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=list(DEFAULT_FILES), help="Markdown files (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a table is out of date")
    args = parser.parse_args(argv)
    current = [update(path, args.check) for path in args.files]
    return 1 if args.check and not all(current) else 0


if __name__ == "__main__":
    sys.exit(main())
