"""`dcae-ext demo`: the README's main job. Prints what was built, then the ops benchmark table."""
from __future__ import annotations

from dcae_ext.commands import bench, info


def add_parser(subparsers):
    parser = subparsers.add_parser("demo", help="build facts and the quick ops benchmark")
    parser.add_argument("--out", default="demo_out", help="output folder")
    return parser


def run(args) -> int:
    info.run(args)
    device = "cuda" if bench.torch.cuda.is_available() else "cpu"
    bench.run_suites(list(bench.SUITES), device, bench.parse_dtypes(None, device), quick=True,
                     results_dir=args.out, save=True)
    return 0
