"""Fused ReLU linear attention, fast vs reference.

    python benchmarks/bench_linear_attention.py [--device cuda] [--dtype bf16,fp16,fp32] [--quick]
"""
from dcae_ext.commands.bench import main_for

if __name__ == "__main__":
    main_for("linear_attention")
