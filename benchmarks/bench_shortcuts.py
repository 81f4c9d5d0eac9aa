"""DC-AE shortcut ops (pixel_unshuffle_mean, pixel_shuffle_repeat), fused vs reference: `dcae-ext bench --ops shortcuts` with the same flags.

    python benchmarks/bench_shortcuts.py [--device cuda] [--dtype bf16,fp32] [--quick] [--no-save]
"""
import sys

from dcae_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--ops", "shortcuts", *sys.argv[1:]]))
