"""vector-quantize-pytorch's training step, stock vs accelerated, and ops.vq_quantize vs its textbook
reference: `dcae-ext bench --ops vq` with the same flags (records in benchmarks/results/<device>-vq.jsonl).

    python benchmarks/bench_vq.py [--device cuda] [--dtype fp32] [--quick] [--no-save]
"""
import sys

from dcae_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--ops", "vq", *sys.argv[1:]]))
