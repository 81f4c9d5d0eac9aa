"""Tables of benchmark records: each fast record beside its reference, with the speedups, the spread
and the fraction of the hardware limit; per record (`table_rows`) or per group of records
(`summary_rows`), rendered as aligned text (the CLI) or Markdown (the READMEs)."""
from __future__ import annotations

import fnmatch
import json

from dcae_ext.bench.timing import SPREAD_LIMIT

HEADER = ["op", "shape", "dtype", "fwd ms", "ref fwd ms", "speedup fwd", "fwd+bwd ms", "ref fwd+bwd ms",
          "speedup f+b", "IQR", "peak MB", "ref peak MB", "of limit fwd", "of limit f+b", "date"]
NOTE = (f"IQR: the widest interquartile range among the row's timings, as a share of its median; `!` marks "
        f"rows above {SPREAD_LIMIT:.0%}, whose times and ratios are noisy; n/a: measured before the harness "
        "recorded a spread. Of limit: achieved bandwidth or FLOP/s over the hardware limit.")

SUMMARY_HEADER = ["op", "cases", "dtype", "speedup fwd", "speedup fwd+bwd", "ref / fast peak memory",
                  "of limit fwd", "of limit f+b", "noisy rows"]
SUMMARY_NOTE = ("Ranges are min-max over the cases; the speedup is reference time / fast time (median of each). "
                f"Noisy rows: cases with an IQR above {SPREAD_LIMIT:.0%} of the median (n/a: no spread recorded).")
# (label, op patterns, shape patterns): one summary row each, when the records have it.
GROUPS = [
    ("IBQ quantize", ["ibq_quantize"], {}),
    ("IBQ quantize + entropy", ["ibq_quantize+entropy"], {}),
    ("linear attention, DC-AE stage shapes", ["linear_attention"], {"case": "dcae_stage_*", "layout": "separate"}),
    ("linear attention, Sana's shape", ["linear_attention"], {"case": "sana_1152", "layout": "separate"}),
    ("linear attention, q k v as views of one tensor", ["linear_attention"], {"layout": "qkv_views"}),
    ("shortcuts, f32c32 stage shapes", ["pixel_unshuffle_mean", "pixel_shuffle_repeat"], {}),
    ("DC-AE encode+decode vs diffusers", ["dcae_encode_decode"], {}),
    ("DC-AE tiled decode vs diffusers", ["dcae_tiled_decode"], {}),
]


def pair_records(records: list[dict]) -> list[tuple[dict, dict | None]]:
    """(fast, reference) pairs measured on the same op, dtype and shape."""
    def key(record):
        return record["op"], record["dtype"], json.dumps(record["shape"], sort_keys=True)

    refs = {key(r): r for r in records if r["impl"] == "reference"}
    return [(r, refs.get(key(r))) for r in records if r["impl"] == "fast"]


def shape_label(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items() if k != "residual")


def speedup(fast: dict, ref: dict | None, key: str) -> float | None:
    if ref and ref.get(key) and fast.get(key):
        return ref[key] / fast[key]
    return None


def speedup_quartiles(fast: dict, ref: dict | None, phase: str) -> tuple[float, float] | None:
    """The speedup's range when each side sits anywhere between its quartiles:
    (ref q1 / fast q3, ref q3 / fast q1); None without a spread on both sides."""
    fast_spread, ref_spread = fast.get(f"{phase}_spread"), (ref or {}).get(f"{phase}_spread")
    if not fast_spread or not ref_spread or not fast_spread.get("q1_ms") or not fast_spread.get("q3_ms"):
        return None
    return ref_spread["q1_ms"] / fast_spread["q3_ms"], ref_spread["q3_ms"] / fast_spread["q1_ms"]


def relative_iqr(record: dict | None, phase: str) -> float | None:
    spread = (record or {}).get(f"{phase}_spread")
    if not spread or not spread.get("median_ms"):
        return None
    return spread["iqr_ms"] / spread["median_ms"]


def worst_spread(fast: dict, ref: dict | None) -> float | None:
    spreads = [relative_iqr(r, phase) for r in (fast, ref) for phase in ("fwd", "fwdbwd")]
    spreads = [s for s in spreads if s is not None]
    return max(spreads) if spreads else None


def _number(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ratio_cell(fast: dict, ref: dict | None, key: str) -> str:
    if fast.get("oom"):
        return "OOM"
    if ref and ref.get("oom"):
        return "ref OOM"
    value = speedup(fast, ref, key)
    return "-" if value is None else f"{value:.2f}x"


def _spread_cell(fast: dict, ref: dict | None) -> str:
    worst = worst_spread(fast, ref)
    if worst is None:
        return "n/a"
    return f"{worst:.1%}" + ("!" if worst > SPREAD_LIMIT else "")


def table_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for fast, ref in pair_records(records):
        other = ref or {}
        rows.append([fast["op"], shape_label(fast["shape"]), fast["dtype"],
                     _number(fast.get("fwd_ms")), _number(other.get("fwd_ms")), _ratio_cell(fast, ref, "fwd_ms"),
                     _number(fast.get("fwdbwd_ms")), _number(other.get("fwdbwd_ms")),
                     _ratio_cell(fast, ref, "fwdbwd_ms"), _spread_cell(fast, ref),
                     _number(fast.get("peak_mem_mb")), _number(other.get("peak_mem_mb")),
                     _percent(fast.get("fwd_fraction_of_limit")), _percent(fast.get("fwdbwd_fraction_of_limit")),
                     fast["date"][:10]])
    return rows


def _matches(record: dict, ops: list[str], shape: dict) -> bool:
    return any(fnmatch.fnmatchcase(record["op"], op) for op in ops) and all(
        fnmatch.fnmatchcase(str(record["shape"].get(key)), pattern) for key, pattern in shape.items())


def _span(values: list[float], fmt) -> str:
    if not values:
        return "-"
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low} - {high}"


def summary_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for label, ops, shape in GROUPS:
        pairs = [(fast, ref) for fast, ref in pair_records(records) if _matches(fast, ops, shape)]
        if not pairs:
            continue
        compared = [(fast, ref) for fast, ref in pairs if ref is not None]

        def values(fn, among=compared):
            found = [fn(fast, ref) for fast, ref in among]
            return [value for value in found if value is not None]

        spreads = values(worst_spread, pairs)
        ref_oom = sum(1 for _, ref in compared if ref.get("oom"))
        memory = _span(values(lambda f, r: r["peak_mem_mb"] / f["peak_mem_mb"]
                              if r.get("peak_mem_mb") and f.get("peak_mem_mb") else None), lambda v: f"{v:.1f}x")
        rows.append([label, str(len(pairs)), ", ".join(sorted({fast["dtype"] for fast, _ in pairs})),
                     _span(values(lambda f, r: speedup(f, r, "fwd_ms")), lambda v: f"{v:.2f}x"),
                     _span(values(lambda f, r: speedup(f, r, "fwdbwd_ms")), lambda v: f"{v:.2f}x"),
                     memory + (f" (ref OOM in {ref_oom})" if ref_oom else ""),
                     _span(values(lambda f, r: f.get("fwd_fraction_of_limit"), pairs), _percent),
                     _span(values(lambda f, r: f.get("fwdbwd_fraction_of_limit"), pairs), _percent),
                     f"{sum(s > SPREAD_LIMIT for s in spreads)} of {len(spreads)}" if spreads else "n/a"])
    return rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_table(records: list[dict]) -> str:
    """The CLI's table of one run, with the note on the spread."""
    return text(HEADER, table_rows(records)) + "\n" + NOTE
