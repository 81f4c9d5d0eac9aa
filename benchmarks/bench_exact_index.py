"""What the precision-independent index costs (docs/ibq.md, "One index on every path"):
`ops.nearest_code` with its default float32 argmax vs `exact_index=True` (the float64 argmax) and
vs rounded operands (`gemm_dtype=torch.bfloat16`, exact too), on random codes and on the
near-duplicate clusters of tests/ops/test_exact_index.py, for each metric.

    python benchmarks/bench_exact_index.py [--device cpu] [--threads 1] [--quick] [--no-save]

Appends one record per (data, metric, path) to benchmarks/results/<device>-exact-index.jsonl, with
the median time and how many rows were certified, re-ranked among candidates or searched in full.
"""
from __future__ import annotations

import argparse
import sys

import torch

from dcae_ext import ops
from dcae_ext.bench.records import append_records, make_record, results_path
from dcae_ext.bench.timing import Timing, time_interleaved

PATHS = {"float32": dict(), "exact_index": dict(exact_index=True), "bf16": dict(gemm_dtype=torch.bfloat16)}


def clusters(n, k, d, spread, device, seed=0):
    """n rows and k codes: independent standard normals (spread 0), or codes in clusters of 8 at
    relative `spread` with one row near each cluster's direction."""
    gen = torch.Generator().manual_seed(seed)
    if not spread:
        z, codes = (torch.randn(rows, d, generator=gen, dtype=torch.float64) for rows in (n, k))
    else:
        centers = torch.randn(k // 8, d, generator=gen, dtype=torch.float64)
        codes = centers.repeat_interleave(8, 0) * (1 + spread * torch.randn(k, d, generator=gen, dtype=torch.float64))
        z = centers[torch.arange(n) % len(centers)] + 0.01 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z.to(device, torch.float32), codes.to(device, torch.float32)


def row_paths(z, codebook, metric, options) -> list[int]:
    """[certified, re-ranked among candidates, searched in full] of one call."""
    search = torch.ops.dcae_ext._ibq_nearest(z, codebook, options.get("gemm_dtype"), 0, metric,
                                             options.get("exact_index", False))[1]
    return torch.bincount(search.long().cpu(), minlength=3).tolist()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--quick", action="store_true", help="one small shape, short timing")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (256, 2048, 64) if args.quick else (1024, 8192, 256)
    timing = Timing(min_blocks=3, max_seconds=1.0) if args.quick else Timing(warmup=1, min_blocks=7, max_seconds=20.0)
    records = []
    for data, spread in (("random", 0.0), ("near-duplicates-1e-6", 1e-6)):
        z, codebook = clusters(*shape, spread, device)
        for metric in ("dot", "l2", "cosine"):
            calls = {path: (lambda options=options: ops.nearest_code(z, codebook, metric, **options))
                     for path, options in PATHS.items()}
            stats, _ = time_interleaved(calls, device, timing)
            base = stats["float32"].median
            for path, options in PATHS.items():
                counts = row_paths(z, codebook, metric, options)
                record = make_record("nearest_code", path, device, torch.float32,
                                     {"N": shape[0], "K": shape[1], "D": shape[2]},
                                     {**stats[path].as_dict(), "ratio_to_float32": stats[path].median / base},
                                     data=data, metric=metric, rows_certified_reranked_full=counts,
                                     quick=args.quick, threads=torch.get_num_threads())
                records.append(record)
                print(f"{data:22s} {metric:6s} {path:12s} {stats[path].median:9.2f} ms  "
                      f"x{stats[path].median / base:5.2f}  rows {counts}")
    if not args.no_save:
        path = results_path(device, kind="exact-index")
        append_records(records, path)
        print(f"appended {len(records)} records to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
