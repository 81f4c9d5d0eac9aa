"""DC-AE encode+decode and tiled decode, ours vs diffusers AutoencoderDC on identical weights.

    python benchmarks/bench_dcae.py [--device cuda] [--dtype bf16] [--quick]
"""
from dcae_ext.commands.bench import main_for

if __name__ == "__main__":
    main_for("dcae")
