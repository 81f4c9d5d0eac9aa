"""Benchmark of the VQ training step (docs/vq.md): vector-quantize-pytorch's `VectorQuantize` as it
ships ("reference") against the same module after `integrations.vector_quantize.accelerate`
("fast"), and `ops.vq_quantize` alone against its textbook cdist + one_hot reference.

`vq_step`: one training step of a default `VectorQuantize(dim=D, codebook_size=K)` (euclidean, EMA
codebook, rotation trick, commitment loss) on N tokens: forward (search, EMA statistics and
update), and backward of sum(quantize * g) + loss to the input. `vq_quantize`: the op with its EMA
statistics, backward of sum(z_q * g) + loss to z and the codebook. Both the stock module and the
reference build N x K tensors (distances and their temporaries, an int64 one-hot and its float32
copy): measured on CPU, 24 N K bytes at the peak for the stock step and 12 N K for the reference
op (`reference_need_mb`, the estimate from these). On the CPU, where running out of memory is not
an exception but the kernel killing the process, an implementation that would need more than
CPU_MEMORY_CAP_MB is not run and its record says `skipped` with the computed need; on CUDA it runs
and an OOM is recorded as such. Records go to <device>-vq.jsonl.

CPU plan: first the issue's goal points at N = 16384, D = 256 (the step only): K = 2^14 (stock
runs, about 6 GB), 2^16 and 2^18 (stock skipped: 24 and 96 GB); then the grid K = 2^12, 2^14,
2^16, 2^18 x D = 8, 32, 256 at N = 512 (both ops). CUDA: the grid at N = 16384, K = 2^12 .. 2^18.
"""
from __future__ import annotations

import copy
import functools

import torch

from dcae_ext import ops
from dcae_ext.bench.harness import Case, SuiteUnavailable, Work, Workload
from dcae_ext.bench.timing import Timing

RESULTS_KIND = "vq"  # the records go to <device>-vq.jsonl
CPU_MEMORY_CAP_MB = 6 * 1024
BYTES_PER_PAIR = {"vq_step": 24, "vq_quantize": 12}  # the reference's peak per (row, code), measured on CPU


def shapes(device: str, quick: bool) -> list[tuple[int, int, int]]:
    if quick:
        return [(256, 2**12, 32), (256, 2**14, 32)]
    if device == "cpu":
        goals = [(16384, 2**k, 256) for k in (14, 16, 18)]
        return goals + [(512, 2**k, d) for d in (8, 32, 256) for k in (12, 14, 16, 18)]
    return [(16384, 2**k, d) for d in (8, 32, 256) for k in range(12, 19)]


def reference_need_mb(op: str, n: int, k: int) -> float:
    return BYTES_PER_PAIR[op] * n * k / 2**20


def cases(device: str, quick: bool) -> list[Case]:
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError as error:
        raise SuiteUnavailable(f"needs vector-quantize-pytorch (pip install 'dcae-ext[vector-quantize]'): {error}")
    found = []
    for n, k, d in shapes(device, quick):
        shape = {"N": n, "K": k, "D": d}
        # the least work is the search's GEMM (once: the backward is O((N + K) D))
        work = Work("matmul", fwd=2.0 * n * k * d, fwdbwd=2.0 * n * k * d)
        goal = n >= 16384 and device == "cpu"
        found.append(Case("vq_step", shape, functools.partial(_step_workloads, (n, k, d)), work,
                          extra={"reference_need_mb": reference_need_mb("vq_step", n, k)},
                          timing=_slow_timing(n, k, d) if goal else None))
        if not goal:
            found.append(Case("vq_quantize", shape, functools.partial(_op_workloads, (n, k, d)), work,
                              extra={"reference_need_mb": reference_need_mb("vq_quantize", n, k)}))
    return found


def timing(device: str, quick: bool) -> Timing:
    if quick:
        return Timing(min_blocks=3, max_seconds=1.0)
    if device == "cpu":
        return Timing(warmup=1, min_blocks=3, max_blocks=7, max_seconds=15.0)
    return Timing(warmup=1, min_blocks=5)


def _slow_timing(n: int, k: int, d: int) -> Timing:
    """The CPU goal points: a search of seconds to a minute per call, so the fewest blocks."""
    return Timing(warmup=1, min_blocks=2 if k <= 2**14 else 1, max_blocks=3, max_seconds=20.0)


def _skip(op, device, n, k) -> str | None:
    need = reference_need_mb(op, n, k)
    if device.type == "cpu" and need > CPU_MEMORY_CAP_MB:
        return (f"needs about {need / 1024:.0f} GB ({BYTES_PER_PAIR[op]} bytes x N x K: N x K distances and "
                f"one-hot), over this run's CPU cap of {CPU_MEMORY_CAP_MB / 1024:.0f} GB")
    return None


def _step_workloads(shape, device, dtype) -> dict[str, Workload]:
    from vector_quantize_pytorch import VectorQuantize

    from dcae_ext.integrations.vector_quantize import accelerate

    n, k, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, n, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
    grads = (torch.randn(1, n, d, device=device, dtype=dtype, generator=gen), None)
    torch.manual_seed(0)
    stock = VectorQuantize(dim=d, codebook_size=k).to(device).train()
    skip = _skip("vq_step", device, n, k)
    fast = stock if skip else copy.deepcopy(stock)  # skipped: no second codebook in memory
    accelerate(fast)

    def step(module):
        quantize, _, loss = module(x)
        return quantize, loss

    reference = Workload(_not_run, skip=skip) if skip else Workload(functools.partial(step, stock), (x,), grads)
    return {"fast": Workload(functools.partial(step, fast), (x,), grads), "reference": reference}


def _not_run():
    raise AssertionError("a skipped workload was run")


def _op_workloads(shape, device, dtype) -> dict[str, Workload]:
    n, k, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(n, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
    codebook = torch.randn(k, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
    grads = (torch.randn(n, d, device=device, dtype=dtype, generator=gen), None)

    def fast():
        out = ops.vq_quantize(z, codebook, ema_statistics=True)
        return out.z_q, out.loss

    def reference():
        z_q, _, codebook_loss, commitment_loss, _, _ = ops.reference.vq_quantize(z, codebook, "l2", 0.25, True)
        return z_q, codebook_loss + commitment_loss

    skip = _skip("vq_quantize", device, n, k)
    return {"fast": Workload(fast, (z, codebook), grads),
            "reference": Workload(_not_run, skip=skip) if skip else Workload(reference, (z, codebook), grads)}
