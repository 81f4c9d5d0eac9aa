"""The latest measurement of every (op, impl, dtype, shape) in a results file, as a Markdown table
for benchmarks/README.md:

    python -m dcae_ext.bench.latest benchmarks/results/cpu.jsonl [--quick | --full]
"""
from __future__ import annotations

import argparse
import json

from dcae_ext.bench.report import pair_records


def read_records(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line) for line in stream if line.strip()]


def latest(records: list[dict]) -> list[dict]:
    """One record per (op, impl, dtype, shape, quick): the one with the latest date (ties: the later line)."""
    chosen: dict[tuple, dict] = {}
    for record in records:
        key = (record["op"], record["impl"], record["dtype"], json.dumps(record["shape"], sort_keys=True),
               bool(record.get("quick")))
        if key not in chosen or record["date"] >= chosen[key]["date"]:
            chosen[key] = record
    return list(chosen.values())


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ratio(ref: dict | None, fast: dict, key: str) -> str:
    if ref is None:
        return "-"
    if ref.get("oom"):
        return "ref OOM"
    return f"{ref[key] / fast[key]:.2f}x" if ref.get(key) and fast.get(key) else "-"


def markdown_table(records: list[dict]) -> str:
    rows = ["| op | shape | dtype | fwd ms | ref fwd ms | speedup fwd | fwd+bwd ms | ref fwd+bwd ms | speedup f+b "
            "| peak MB | ref peak MB | of limit | date |",
            "|" + " --- |" * 13]
    for fast, ref in pair_records(records):
        shape = " ".join(f"{k}={v}" for k, v in fast["shape"].items() if k != "residual")
        limit = fast.get("fraction_of_limit")
        ref = ref or None
        rows.append("| " + " | ".join([
            fast["op"], shape, fast["dtype"], _ms(fast.get("fwd_ms")), _ms((ref or {}).get("fwd_ms")),
            _ratio(ref, fast, "fwd_ms"), _ms(fast.get("fwdbwd_ms")), _ms((ref or {}).get("fwdbwd_ms")),
            _ratio(ref, fast, "fwdbwd_ms"), _ms(fast.get("peak_mem_mb")), _ms((ref or {}).get("peak_mem_mb")),
            "-" if limit is None else f"{limit:.1%}", fast["date"][:10]]) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="only --quick runs")
    group.add_argument("--full", action="store_true", help="only full runs")
    args = parser.parse_args()
    records = latest(read_records(args.path))
    if args.quick or args.full:
        records = [r for r in records if bool(r.get("quick")) == args.quick]
    first = records[0] if records else None
    if first:
        print(f"{first['device_name']} ({first['device']}), torch {first['torch']}, cuda {first['cuda']}\n")
    print(markdown_table(records))


if __name__ == "__main__":
    main()
