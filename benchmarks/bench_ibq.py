"""IBQ quantizer (quantize, quantize+entropy), fused vs reference.

    python benchmarks/bench_ibq.py [--device cuda] [--dtype bf16,fp32] [--quick]
"""
from dcae_ext.commands.bench import main_for

if __name__ == "__main__":
    main_for("ibq")
