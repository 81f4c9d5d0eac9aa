"""PNG plots of benchmark records (matplotlib, see dcae_ext.figures): the speedup of every fast op (and of any
baseline, such as IBQ's "sdpa") over its reference, and IBQ (and VQ) time and peak memory against the
codebook size K, one line per implementation, with the sizes where one ran out of memory (or was
skipped) marked."""
from __future__ import annotations

import os
from collections import Counter, defaultdict

from dcae_ext.bench.report import op_label, pair_records, speedup, speedup_quartiles, worst_spread
from dcae_ext.bench.timing import SPREAD_LIMIT
from dcae_ext.figures import new_figure, save_png

CODEBOOK_KEYS = ("K", "num_codes", "codebook_size")
ROWS_KEY = "N"
IMPL_STYLE = {"fast": ("fused", "-"), "reference": ("reference", "--")}  # impl -> (legend name, line style)


def _shape_text(shape: dict) -> str:
    return " ".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in shape.items()
                    if k != "residual")


def _title(records: list[dict]) -> str:
    """Device, dtypes, torch versions and dates of the records (a results file may hold several runs)."""
    def joined(key, width=None):
        return ", ".join(sorted({str(r[key])[:width] for r in records}))

    dates = sorted({r["date"][:10] for r in records})
    days = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return f"{joined('device_name')} ({joined('device')}), {joined('dtype')}, torch {joined('torch')}, {days}"


def plot_speedups(records: list[dict], path: str) -> str | None:
    """Horizontal bars: reference time / fast time per (op, shape, dtype), forward and forward+backward,
    on a log axis with 1x marked, and a row `op [name]` for each baseline's; whiskers span the speedup
    between the timings' quartiles, and a `!` marks a noisy row. Returns the path, or None when no
    pair with a reference exists."""
    pairs = [(fast, ref) for fast, ref in pair_records(records) if ref is not None]
    if not pairs:
        return None
    labels, fwd, fwdbwd, ref_oom, noisy = [], [], [], [], []
    for fast, ref in pairs:
        labels.append(f"{op_label(fast)} ({fast['dtype']})\n{_shape_text(fast['shape'])}")
        ref_oom.append("reference OOM" if ref.get("oom") else "reference skipped" if ref.get("skipped") else "")
        fwd.append(speedup(fast, ref, "fwd_ms"))
        fwdbwd.append(speedup(fast, ref, "fwdbwd_ms"))
        noisy.append((worst_spread(fast, ref) or 0.0) > SPREAD_LIMIT)
    height = 0.38
    figure = new_figure(figsize=(12, 1.4 + 0.55 * len(pairs)), layout="constrained")
    axis = figure.subplots()
    rows = range(len(pairs))
    axis.barh([r - height / 2 for r in rows], [v or 0 for v in fwd], height, label="forward", color="tab:blue")
    axis.barh([r + height / 2 for r in rows], [v or 0 for v in fwdbwd], height, label="forward + backward",
              color="tab:orange")
    values = [v for v in fwd + fwdbwd if v]
    bar_labels = []  # (x, y, text): right of the bar or of its whisker
    for (fast, ref), row in zip(pairs, rows):
        for offset, phase, value in ((-height / 2, "fwd", fwd[row]), (height / 2, "fwdbwd", fwdbwd[row])):
            if not value:
                continue
            span = speedup_quartiles(fast, ref, phase)
            if span:
                values += list(span)
                axis.errorbar([value], [row + offset], xerr=[[max(value - span[0], 0)], [max(span[1] - value, 0)]],
                              fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
            bar_labels.append((max(value, span[1]) if span else value, row + offset,
                               f"{value:.2f}x" + (" !" if noisy[row] else "")))
    low, high = min(values + [1.0]) / 1.5, max(values + [1.0]) * 1.5
    for x, y, label in bar_labels:
        axis.text(x * 1.03, y, label, va="center", fontsize=7)
    for row in rows:
        if ref_oom[row]:
            axis.text(low * 1.1, row, ref_oom[row], va="center", fontsize=8, color="firebrick")
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_xscale("log", base=2)
    axis.set_xlim(low, high * 1.3)
    axis.xaxis.set_major_formatter(lambda value, _: f"{value:.3g}x")
    axis.set_yticks(list(rows), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("speedup over the reference (reference ms / its ms; > 1 is faster)\nwhiskers: between the "
                    f"timings' quartiles; !: an IQR above {SPREAD_LIMIT:.0%} of the median")
    axis.set_title("fast op (and baselines) vs reference: " + _title(records), fontsize=10)
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(axis="x", which="both", alpha=0.3)
    return save_png(figure, path, dpi=110)


def _codebook_size(record: dict) -> int | None:
    for key in CODEBOOK_KEYS:
        if key in record["shape"]:
            return int(record["shape"][key])
    return None


def plot_ibq_scaling(records: list[dict], path: str) -> str | None:
    """Two panels against codebook size K (log2 axis): median fwd+bwd time (fwd where no backward
    was timed) and peak memory, one line per (op, impl, dtype); a red x where a run ran out of memory.
    A K measured at another row count N than the most common one says so under its tick.
    Returns the path, or None when no IBQ record carries a codebook size."""
    return plot_codebook_scaling(records, path, "ibq", "IBQ")


def plot_vq_scaling(records: list[dict], path: str) -> str | None:
    """plot_ibq_scaling for the VQ suite (vq_step, vq_quantize): one line per (op, impl, dtype, N, D),
    a red x where an implementation ran out of memory or was skipped (the memory it would need)."""
    return plot_codebook_scaling(records, path, "vq", "VQ training step", rows_in_legend=True)


def plot_codebook_scaling(records: list[dict], path: str, op_prefix: str, title: str,
                          rows_in_legend: bool = False) -> str | None:
    """The time and memory panels against K of the ops named `op_prefix`*; rows_in_legend: the row
    count N is part of each line (records at several N per K) instead of a note under the ticks."""
    series = defaultdict(list)
    rows_at = {}  # K -> N of the records measured at that K
    for record in records:
        size = _codebook_size(record)
        if record["op"].startswith(op_prefix) and size is not None:
            others = {k: v for k, v in record["shape"].items()
                      if k not in CODEBOOK_KEYS and (rows_in_legend or k != ROWS_KEY)}
            series[(record["op"], record["impl"], record["dtype"], _shape_text(others))].append((size, record))
            rows_at[size] = None if rows_in_legend else record["shape"].get(ROWS_KEY)
    if not series:
        return None
    usual_rows = Counter(rows_at.values()).most_common(1)[0][0]
    from matplotlib.ticker import NullLocator

    figure = new_figure(figsize=(13, 5.5), layout="constrained")
    time_axis, memory_axis = figure.subplots(1, 2)
    timed_key = "fwdbwd_ms" if any(r.get("fwdbwd_ms") for pts in series.values() for _, r in pts) else "fwd_ms"
    axes = ((time_axis, timed_key), (memory_axis, "peak_mem_mb"))
    tops = {key: max([r[key] for pts in series.values() for _, r in pts if not r.get("oom") and r.get(key)],
                     default=1.0) * 1.5 for _, key in axes}
    marked = Counter()  # (axis, K) -> OOM labels placed there, to stack the next one above
    # with several shapes per K (rows_in_legend): one colour per shape, one marker per op, the
    # line style per implementation, so that the many lines stay apart
    shape_colors = {rest: f"C{i % 10}" for i, rest in enumerate(sorted({key[3] for key in series}))}
    op_markers = {op: "os^D"[i % 4] for i, op in enumerate(sorted({key[0] for key in series}))}
    for (op, impl, dtype, rest), points in sorted(series.items()):
        points.sort(key=lambda item: item[0])
        name, line = IMPL_STYLE.get(impl, (impl, ":"))
        rows = f"N={usual_rows} " if usual_rows is not None else ""
        style = dict(marker="o", linestyle=line, label=f"{op} {name} {dtype} {rows}{rest}".rstrip())
        if rows_in_legend:
            style.update(marker=op_markers[op], color=shape_colors[rest])
        for axis, key in axes:
            ok = [(k, r[key]) for k, r in points if not r.get("oom") and r.get(key) is not None]
            if ok:
                axis.plot([k for k, _ in ok], [v for _, v in ok], **style)
            for k, r in [(k, r) for k, r in points if r.get("oom") or r.get("skipped")]:
                axis.scatter([k], [tops[key]], marker="x", s=80, color="firebrick", zorder=5)
                what = "OOM" if r.get("oom") else "skipped" + (
                    f": needs {r['reference_need_mb'] / 1024:.0f} GB" if r.get("reference_need_mb") else "")
                label = (f"{op.removeprefix(op_prefix + '_')} {name}\n{rest}\n{what}" if rows_in_legend
                         else f"{op.removeprefix(op_prefix + '_')} {name} {dtype} {what}")
                axis.annotate(label, (k, tops[key]), textcoords="offset points",
                              xytext=(0, 8 + (30 if rows_in_legend else 10) * marked[(key, k)]), ha="center",
                              fontsize=7, color="firebrick")
                marked[(key, k)] += 1
    ticks = sorted(rows_at)
    tick_labels = [(f"{k / 1024:g}k" if k >= 1024 else f"{k:g}")
                   + (f"\nN={rows_at[k]}" if rows_at[k] != usual_rows else "") for k in ticks]
    for axis, label in ((time_axis, "median " + ("forward+backward" if timed_key == "fwdbwd_ms" else "forward")
                         + " ms"), (memory_axis, "peak memory MB")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(ticks, tick_labels)
        axis.xaxis.set_minor_locator(NullLocator())
        axis.yaxis.set_major_formatter(lambda value, _: f"{value:g}")
        axis.yaxis.set_minor_formatter(lambda value, _: f"{value:g}")
        axis.tick_params(axis="y", which="minor", labelsize=7)
        axis.set_xlabel("codebook size K")
        axis.set_ylabel(label)
        axis.grid(which="both", alpha=0.3)
    handles, labels = time_axis.get_legend_handles_labels()  # below the panels: no point hidden
    figure.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=7)
    figure.suptitle(f"{title} vs codebook size: " + _title([r for pts in series.values() for _, r in pts]),
                    fontsize=10)
    return save_png(figure, path, dpi=110)


def write_plots(records: list[dict], out_dir: str, prefix: str) -> list[str]:
    """Every plot the records allow, as <out_dir>/<prefix>_<plot>.png; returns the paths written."""
    written = [plot_speedups(records, os.path.join(out_dir, f"{prefix}_speedup.png")),
               plot_ibq_scaling(records, os.path.join(out_dir, f"{prefix}_ibq_vs_codebook.png")),
               plot_vq_scaling(records, os.path.join(out_dir, f"{prefix}_vq_vs_codebook.png"))]
    return [path for path in written if path]
