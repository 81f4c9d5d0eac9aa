"""Text table of benchmark records: fast next to reference, with speedups and the limit fraction."""
from __future__ import annotations

import json


def _shape_key(record: dict) -> str:
    return json.dumps(record["shape"], sort_keys=True)


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _shape_label(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items() if k != "residual")


def pair_records(records: list[dict]) -> list[tuple[dict, dict | None]]:
    """(fast, reference) pairs measured on the same op, dtype and shape."""
    refs = {(r["op"], r["dtype"], _shape_key(r)): r for r in records if r["impl"] == "reference"}
    return [(r, refs.get((r["op"], r["dtype"], _shape_key(r)))) for r in records if r["impl"] == "fast"]


def format_table(records: list[dict]) -> str:
    header = ["op", "shape", "dtype", "fwd ms", "ref fwd", "x fwd", "fwd+bwd ms", "ref f+b", "x f+b",
              "peak MB", "ref MB", "of limit"]
    rows = []
    for fast, ref in pair_records(records):
        ref = ref or {}

        def ratio(key):
            if ref.get("oom"):
                return "ref OOM"
            if ref.get(key) and fast.get(key):
                return f"{ref[key] / fast[key]:.2f}x"
            return "-"

        rows.append([fast["op"], _shape_label(fast["shape"]), fast["dtype"],
                     _fmt(fast.get("fwd_ms")), _fmt(ref.get("fwd_ms")), ratio("fwd_ms"),
                     _fmt(fast.get("fwdbwd_ms")), _fmt(ref.get("fwdbwd_ms")), ratio("fwdbwd_ms"),
                     _fmt(fast.get("peak_mem_mb"), ".1f"), _fmt(ref.get("peak_mem_mb"), ".1f"),
                     _fmt(fast.get("fraction_of_limit"), ".0%")])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
