"""IBQ quantizer (quantize, quantize+entropy), fused vs reference: `dcae-ext bench --ops ibq` with the same flags.

    python benchmarks/bench_ibq.py [--device cuda] [--dtype bf16,fp32] [--quick] [--no-save]
"""
import sys

from dcae_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--ops", "ibq", *sys.argv[1:]]))
