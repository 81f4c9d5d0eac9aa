"""`dcae-ext bench`: race the fast ops (and the end-to-end DC-AE) against their references, print a
table with the spread of every timing, append JSONL, draw PNG plots."""
from __future__ import annotations

import importlib
import inspect
import os

import torch

from dcae_ext.commands._options import DTYPES, default_dtype, select_device_type

SUITES = {
    "shortcuts": "dcae_ext.bench.shortcuts",
    "linear_attention": "dcae_ext.bench.linear_attention",
    "ibq": "dcae_ext.bench.ibq",
    "dcae": "dcae_ext.bench.dcae",  # end-to-end DC-AE encode/decode, ours vs diffusers
    "diffusers": "dcae_ext.bench.diffusers_models",  # diffusers' Sana models, stock vs accelerate()
    "vq": "dcae_ext.bench.vq",  # vector-quantize-pytorch's training step, stock vs accelerated; ops.vq_quantize
}


def add_parser(subparsers):
    parser = subparsers.add_parser("bench", help="benchmark the fast ops against the references")
    parser.add_argument("--ops", default="all", help="all or a comma list of: " + ", ".join(SUITES))
    parser.add_argument("--model", default=None,
                        help="DC-AE config of the end-to-end (dcae) benchmark, e.g. f32c32 (default: the suite's)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="comma list of fp32, bf16, fp16 (default: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the run (default: torch's, one per core); recorded in each record")
    parser.add_argument("--quick", action="store_true", help="smaller shapes and a shorter timing budget")
    parser.add_argument("--results-dir", default="benchmarks/results", help="where <device>.jsonl is appended")
    parser.add_argument("--no-save", action="store_true", help="print only, append nothing, draw nothing")
    parser.add_argument("--plots-dir", default=None, help="where the PNG plots go (default: <results-dir>/plots)")
    return parser


def parse_dtypes(text: str | None, device: str) -> list[torch.dtype]:
    if text is None:
        return [DTYPES[default_dtype(torch.device(device))]]
    try:
        return [DTYPES[name.strip()] for name in text.split(",")]
    except KeyError as error:
        raise SystemExit(f"--dtype: unknown {error.args[0]!r}; choose from {', '.join(DTYPES)}")


def selected_suites(text: str) -> list[str]:
    names = list(SUITES) if text == "all" else [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        raise SystemExit(f"--ops: unknown {', '.join(unknown)}; choose from all, {', '.join(SUITES)}")
    return names


def _cases(suite, device, quick, model):
    if model is None:
        return suite.cases(device, quick)
    if "model" not in inspect.signature(suite.cases).parameters:
        raise SystemExit(f"--model: the suite {suite.__name__} takes no model")
    return suite.cases(device, quick, model=model)


def _busy_warning(device: str) -> str | None:
    if device != "cpu" or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load < 0.5 * cores:
        return None
    return (f"note: load average {load:.1f} on {cores} cores. Other processes share these cores, so CPU "
            "timings (multi-threaded ops most of all) are noisy; the IQR column shows how much.")


def run_suites(names, device, dtypes, quick, results_dir, save=True, model=None, plots_dir=None) -> list[dict]:
    from dcae_ext.bench.harness import SuiteUnavailable, default_timing, run_cases
    from dcae_ext.bench.records import append_records, results_path
    from dcae_ext.bench.report import format_table
    from dcae_ext.ops import _library

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    missing = ("reference mode is on (DCAE_EXT_REFERENCE=1 or ops.use_reference), so every op runs its reference"
               if _library.reference_mode() else _library.kernels_missing(device))
    if missing:
        raise SystemExit(f"--device {device}: {missing}; the 'fast' timings would be the reference's")
    warning = _busy_warning(device)
    if warning:
        print(warning)
    written = {}  # results file -> records appended

    records = []
    for name in names:
        try:
            suite = importlib.import_module(SUITES[name])
        except ModuleNotFoundError as error:
            if error.name != SUITES[name]:
                raise
            print(f"[{name}] no benchmark suite in this build; skipped")
            continue
        try:
            cases = _cases(suite, device, quick, model if name == "dcae" else None)
        except SuiteUnavailable as reason:
            print(f"[{name}] skipped: {reason}")
            continue
        timing = suite.timing(device, quick) if hasattr(suite, "timing") else default_timing(quick)
        # a suite with a RESULTS_KIND keeps its records apart: <device>-<kind>.jsonl
        path = results_path(device, results_dir, kind=getattr(suite, "RESULTS_KIND", "")) if save else None

        def keep(case_records: list[dict], path=path) -> None:
            for record in case_records:
                record["quick"] = quick
            if path:  # case by case: a suite cut short (a timeout, Ctrl-C) keeps what it measured
                append_records(case_records, path)
                written[path] = written.get(path, 0) + len(case_records)

        suite_records = run_cases(cases, device, dtypes, timing, on_case=keep)
        print(f"\n[{name}] on {device}")
        print(format_table(suite_records))
        records += suite_records
        if path and suite_records:  # after each suite, so a run cut short keeps its plots
            _redraw_plots(path, plots_dir or os.path.join(results_dir, "plots"), quick)
    for path, count in written.items():
        print(f"\nappended {count} records to {path}")
    return records


def _redraw_plots(path: str, plots_dir: str, quick: bool) -> None:
    """The plots of the results file: the latest record of every case with this run's --quick, so
    that suites run by separate commands into one file share the plots instead of replacing them."""
    from dcae_ext.bench.plots import write_plots
    from dcae_ext.bench.records import latest, read_records

    records = [record for record in latest(read_records(path)) if bool(record.get("quick")) == quick]
    prefix = os.path.splitext(os.path.basename(path))[0]
    for plot in write_plots(records, plots_dir, prefix):
        print(f"wrote {plot}")


def run(args) -> int:
    names = selected_suites(args.ops)
    if args.model is not None and "dcae" not in names:
        raise SystemExit("--model: applies to the end-to-end suite; add dcae to --ops")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads: must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = select_device_type(args.device)
    run_suites(names, device, parse_dtypes(args.dtype, device), args.quick,
               args.results_dir, save=not args.no_save, model=args.model, plots_dir=args.plots_dir)
    return 0
