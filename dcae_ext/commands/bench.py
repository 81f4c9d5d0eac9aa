"""`dcae-ext bench`: race the fast ops (and the end-to-end DC-AE) against their references, print a
table, append JSONL, draw PNG plots."""
from __future__ import annotations

import argparse
import importlib
import inspect
import os

import torch

SUITES = {
    "shortcuts": "dcae_ext.bench.shortcuts",
    "linear_attention": "dcae_ext.bench.linear_attention",
    "ibq": "dcae_ext.bench.ibq",
    "dcae": "dcae_ext.bench.dcae",  # end-to-end DC-AE encode/decode, ours vs diffusers
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser, with_ops: bool = True) -> None:
    if with_ops:
        parser.add_argument("--ops", default="all", help="all or a comma list of: " + ", ".join(SUITES))
        parser.add_argument("--model", default=None,
                            help="DC-AE config of the end-to-end (dcae) benchmark, e.g. f32c32 (default: the suite's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="comma list of fp32, bf16, fp16 (default: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats")
    parser.add_argument("--results-dir", default="benchmarks/results", help="where <device>.jsonl is appended")
    parser.add_argument("--no-save", action="store_true", help="print only, append nothing, draw nothing")
    parser.add_argument("--plots-dir", default=None, help="where the PNG plots go (default: <results-dir>/plots)")


def add_parser(subparsers):
    parser = subparsers.add_parser("bench", help="benchmark the fast ops against the references")
    add_arguments(parser)
    return parser


def parse_dtypes(text: str | None, device: str) -> list[torch.dtype]:
    if text is None:
        return [torch.float32] if device == "cpu" else [torch.bfloat16]
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


def _run_suite(suite, device, dtypes, quick, model):
    kwargs = dict(device=device, dtypes=dtypes, quick=quick)
    if model is not None:
        if "model" not in inspect.signature(suite.run).parameters:
            raise SystemExit(f"--model: the suite {suite.__name__} takes no model")
        kwargs["model"] = model
    return suite.run(**kwargs)


def run_suites(names, device, dtypes, quick, results_dir, save=True, model=None, plots_dir=None) -> list[dict]:
    from dcae_ext.bench.harness import append_records, results_path
    from dcae_ext.bench.report import format_table

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    records = []
    for name in names:
        try:
            suite = importlib.import_module(SUITES[name])
        except ModuleNotFoundError as error:
            if error.name != SUITES[name]:
                raise
            print(f"[{name}] no benchmark suite in this build; skipped")
            continue
        suite_records = _run_suite(suite, device, dtypes, quick, model if name == "dcae" else None)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        for record in suite_records:
            record.setdefault("quick", quick)
            record.setdefault("load_1min", load)  # CPU timings of a busy machine are noise: keep the evidence
        print(f"\n[{name}] on {device}")
        print(format_table(suite_records))
        records += suite_records
    if save and records:
        path = results_path(device, results_dir)
        append_records(records, path)
        print(f"\nappended {len(records)} records to {path}")
        from dcae_ext.bench.plots import write_plots

        prefix = os.path.splitext(os.path.basename(path))[0]
        for plot in write_plots(records, plots_dir or os.path.join(results_dir, "plots"), prefix):
            print(f"wrote {plot}")
    return records


def run(args) -> int:
    names = selected_suites(args.ops)
    if args.model is not None and "dcae" not in names:
        raise SystemExit("--model: applies to the end-to-end suite; add dcae to --ops")
    run_suites(names, args.device, parse_dtypes(args.dtype, args.device), args.quick,
               args.results_dir, save=not args.no_save, model=args.model, plots_dir=args.plots_dir)
    return 0


def main_for(suite: str) -> None:
    """Entry point of benchmarks/bench_<suite>.py."""
    parser = argparse.ArgumentParser(description=f"benchmark {suite}")
    add_arguments(parser, with_ops=False)
    args = parser.parse_args()
    run_suites([suite], args.device, parse_dtypes(args.dtype, args.device), args.quick, args.results_dir,
               save=not args.no_save, plots_dir=args.plots_dir)
