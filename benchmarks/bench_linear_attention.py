"""ReLU linear attention, fused vs reference: `dcae-ext bench --ops linear_attention` with the same flags.

    python benchmarks/bench_linear_attention.py [--device cuda] [--dtype bf16,fp32] [--quick] [--no-save]
"""
import sys

from dcae_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--ops", "linear_attention", *sys.argv[1:]]))
