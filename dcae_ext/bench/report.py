"""Tables of benchmark records: each fast record beside its reference, with the speedups, the spread
and the fraction of the hardware limit; per record (`table_rows`) or per group of records
(`summary_rows`), rendered as aligned text (the CLI) or Markdown (the READMEs).

A baseline is any other implementation raced in the same case (IBQ's "sdpa"): it gets rows of its
own against the reference, labelled `op [sdpa]`, and the fast rows gain `vs sdpa` columns (baseline
time / fast time). Without baseline records the tables are as before."""
from __future__ import annotations

import fnmatch
import itertools
import json

from dcae_ext.bench.timing import SPREAD_LIMIT

FAST, REFERENCE = "fast", "reference"
HEADER = ["op", "shape", "dtype", "fwd ms", "ref fwd ms", "speedup fwd", "fwd+bwd ms", "ref fwd+bwd ms",
          "speedup f+b", "IQR", "peak MB", "ref peak MB", "of limit fwd", "of limit f+b", "date"]
NOTE = (f"IQR: the widest interquartile range among the row's timings, as a share of its median; `!` marks "
        f"rows above {SPREAD_LIMIT:.0%}, whose times and ratios are noisy; n/a: measured before the harness "
        "recorded a spread. Of limit: achieved bandwidth or FLOP/s over the hardware limit.")
BASELINE_NOTE = ("Rows `op [name]`: the baseline `name` against the reference; `vs name`: its time / the fast "
                 "op's time (> 1: the fast op is faster).")

SUMMARY_HEADER = ["op", "cases", "dtype", "speedup fwd", "speedup fwd+bwd", "ref / fast peak memory",
                  "of limit fwd", "of limit f+b", "noisy rows"]
SUMMARY_NOTE = ("Ranges are min-max over the cases; the speedup is reference time / fast time (median of each). "
                f"Noisy rows: cases with an IQR above {SPREAD_LIMIT:.0%} of the median (n/a: no spread recorded).")
# (label, op patterns, shape patterns): one summary row each, when the records have it.
GROUPS = [
    ("IBQ quantize", ["ibq_quantize"], {}),
    ("IBQ quantize + entropy", ["ibq_quantize+entropy"], {}),
    ("VQ training step: vector-quantize-pytorch accelerated vs stock", ["vq_step"], {}),
    ("VQ step op (vq_quantize) vs cdist + one_hot", ["vq_quantize"], {}),
    ("linear attention, DC-AE stage shapes", ["linear_attention"], {"case": "dcae_stage_*", "layout": "separate"}),
    ("linear attention, Sana's shape", ["linear_attention"], {"case": "sana_1152", "layout": "separate"}),
    ("linear attention, q k v as views of one tensor", ["linear_attention"], {"layout": "qkv_views"}),
    ("shortcuts, f32c32 stage shapes", ["pixel_unshuffle_mean", "pixel_shuffle_repeat"], {}),
    ("DC-AE encode+decode vs diffusers", ["dcae_encode_decode"], {}),
    ("DC-AE tiled decode vs diffusers", ["dcae_tiled_decode"], {}),
    ("DC-AE 1.5 encode vs official modules", ["dcae_encode"], {"model": "dc-ae-f*c128-1.5"}),
    ("DC-AE 1.5 decode (full, 16-channel prefix) vs official", ["dcae_decode"], {"model": "dc-ae-f*c128-1.5"}),
    ("DC-AE-Lite encode vs diffusers", ["dcae_encode"], {"model": "dc-ae-lite-*"}),
    ("DC-AE-Lite decode vs diffusers", ["dcae_decode"], {"model": "dc-ae-lite-*"}),
]


def _case_key(record: dict) -> tuple:
    return record["op"], record["dtype"], json.dumps(record["shape"], sort_keys=True)


def pair_records(records: list[dict]) -> list[tuple[dict, dict | None]]:
    """(record, reference) pairs measured on the same op, dtype and shape, for every implementation
    but the reference (fast, then any baseline, in the records' order)."""
    refs = {_case_key(r): r for r in records if r["impl"] == REFERENCE}
    return [(r, refs.get(_case_key(r))) for r in records if r["impl"] != REFERENCE]


def baselines(records: list[dict]) -> list[str]:
    """The implementations other than fast and reference, sorted."""
    return sorted({r["impl"] for r in records} - {FAST, REFERENCE})


def _baseline_records(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(op, dtype, shape) -> baseline name -> its record."""
    found: dict[tuple, dict[str, dict]] = {}
    for record in records:
        if record["impl"] not in (FAST, REFERENCE):
            found.setdefault(_case_key(record), {})[record["impl"]] = record
    return found


def op_label(record: dict) -> str:
    return record["op"] if record["impl"] == FAST else f"{record['op']} [{record['impl']}]"


def _with_baseline_columns(header: list[str], names: list[str]) -> list[str]:
    """`vs <name> fwd`, `vs <name> f+b` for each baseline, after the speedups over the reference."""
    at = max(header.index(column) for column in header if column.startswith("speedup")) + 1
    return header[:at] + [f"vs {name} {phase}" for name in names for phase in ("fwd", "f+b")] + header[at:]


def table_header(records: list[dict]) -> list[str]:
    return _with_baseline_columns(HEADER, baselines(records))


def summary_header(records: list[dict]) -> list[str]:
    return _with_baseline_columns(SUMMARY_HEADER, baselines(records))


def table_note(records: list[dict], note: str = NOTE) -> str:
    return note + (" " + BASELINE_NOTE if baselines(records) else "")


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


def worst_spread(fast: dict, ref: dict | None, *others: dict | None) -> float | None:
    spreads = [relative_iqr(r, phase) for r in (fast, ref, *others) for phase in ("fwd", "fwdbwd")]
    spreads = [s for s in spreads if s is not None]
    return max(spreads) if spreads else None


def _number(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ratio_cell(fast: dict, ref: dict | None, key: str, ref_name: str = "ref") -> str:
    # `oom` is per record: a run that ran out of memory only in its backward keeps its forward time
    if fast.get("oom") and fast.get(key) is None:
        return "OOM"
    if ref and ref.get("oom") and ref.get(key) is None:
        return f"{ref_name} OOM"
    if ref and ref.get("skipped"):
        return f"{ref_name} skipped"
    value = speedup(fast, ref, key)
    return "-" if value is None else f"{value:.2f}x"


def _row_spread(fast: dict, ref: dict | None, found: dict) -> float | None:
    """The widest IQR behind a table row: its own and the reference's timings, and on a fast row
    those of the baselines its `vs` columns divide by (`found`: `_baseline_records`)."""
    rivals = found.get(_case_key(fast), {}) if fast["impl"] == FAST else {}
    return worst_spread(fast, ref, *rivals.values())


def _spread_cell(worst: float | None) -> str:
    if worst is None:
        return "n/a"
    return f"{worst:.1%}" + ("!" if worst > SPREAD_LIMIT else "")


def _baseline_cells(record: dict, names: list[str], rivals: dict[str, dict]) -> list[str]:
    """Per baseline: its time / the fast time, forward and forward+backward ("-" on a baseline's row)."""
    if record["impl"] != FAST:
        return ["-"] * (2 * len(names))
    return [_ratio_cell(record, rivals[name], key, name) if name in rivals else "-"
            for name in names for key in ("fwd_ms", "fwdbwd_ms")]


def table_rows(records: list[dict]) -> list[list[str]]:
    """One row per record but the references', in the columns of `table_header(records)`."""
    names, found = baselines(records), _baseline_records(records)
    rows = []
    for fast, ref in pair_records(records):
        other = ref or {}
        rivals = found.get(_case_key(fast), {}) if fast["impl"] == FAST else {}
        rows.append([op_label(fast), shape_label(fast["shape"]), fast["dtype"],
                     _number(fast.get("fwd_ms")), _number(other.get("fwd_ms")), _ratio_cell(fast, ref, "fwd_ms"),
                     _number(fast.get("fwdbwd_ms")), _number(other.get("fwdbwd_ms")),
                     _ratio_cell(fast, ref, "fwdbwd_ms"), *_baseline_cells(fast, names, rivals),
                     _spread_cell(_row_spread(fast, ref, found)),
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
    """One row per group and implementation (the fast op, then each baseline against the reference),
    in the columns of `summary_header(records)`."""
    names, found = baselines(records), _baseline_records(records)
    rows = []
    for (label, ops, shape), impl in itertools.product(GROUPS, [FAST] + names):
        pairs = [(fast, ref) for fast, ref in pair_records(records)
                 if fast["impl"] == impl and _matches(fast, ops, shape)]
        if not pairs:
            continue
        compared = [(fast, ref) for fast, ref in pairs if ref is not None]

        def values(fn, among=compared):
            found = [fn(fast, ref) for fast, ref in among]
            return [value for value in found if value is not None]

        spreads = values(lambda f, r: _row_spread(f, r, found), pairs)
        ref_oom = sum(1 for _, ref in compared if ref.get("oom"))
        memory = _span(values(lambda f, r: r["peak_mem_mb"] / f["peak_mem_mb"]
                              if r.get("peak_mem_mb") and f.get("peak_mem_mb") else None), lambda v: f"{v:.1f}x")
        rivals = [] if impl != FAST else [_baseline_span(pairs, found, name, key) for name in names
                                          for key in ("fwd_ms", "fwdbwd_ms")]
        rows.append([label if impl == FAST else f"{label} [{impl}]", str(len(pairs)),
                     ", ".join(sorted({fast["dtype"] for fast, _ in pairs})),
                     _span(values(lambda f, r: speedup(f, r, "fwd_ms")), lambda v: f"{v:.2f}x"),
                     _span(values(lambda f, r: speedup(f, r, "fwdbwd_ms")), lambda v: f"{v:.2f}x"),
                     *(rivals or ["-"] * (2 * len(names))),
                     memory + (f" (ref OOM in {ref_oom})" if ref_oom else ""),
                     _span(values(lambda f, r: f.get("fwd_fraction_of_limit"), pairs), _percent),
                     _span(values(lambda f, r: f.get("fwdbwd_fraction_of_limit"), pairs), _percent),
                     f"{sum(s > SPREAD_LIMIT for s in spreads)} of {len(spreads)}" if spreads else "n/a"])
    return rows


def _baseline_span(pairs, found, name: str, key: str) -> str:
    """Range of the baseline's time / the fast time over the group's cases, with its OOM count."""
    rivals = [(fast, found.get(_case_key(fast), {}).get(name)) for fast, _ in pairs]
    rivals = [(fast, rival) for fast, rival in rivals if rival is not None]
    ratios = [speedup(fast, rival, key) for fast, rival in rivals]
    oom = sum(1 for _, rival in rivals if rival.get("oom"))
    text = _span([r for r in ratios if r is not None], lambda v: f"{v:.2f}x")
    return text + (f" ({name} OOM in {oom})" if oom else "")


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
    return text(table_header(records), table_rows(records)) + "\n" + table_note(records)
