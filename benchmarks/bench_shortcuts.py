"""Shortcut ops (pixel_unshuffle_mean / pixel_shuffle_repeat), fast vs reference.

    python benchmarks/bench_shortcuts.py [--device cuda] [--dtype bf16] [--quick]
"""
from dcae_ext.commands.bench import main_for

if __name__ == "__main__":
    main_for("shortcuts")
