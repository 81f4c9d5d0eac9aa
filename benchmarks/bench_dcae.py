"""DC-AE encode+decode, ours vs diffusers' AutoencoderDC: `dcae-ext bench --ops dcae` with the same flags.

    python benchmarks/bench_dcae.py [--device cuda] [--dtype bf16,fp32] [--quick] [--no-save]
"""
import sys

from dcae_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--ops", "dcae", *sys.argv[1:]]))
