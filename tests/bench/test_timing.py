"""The timing loop: blocks, interleaving, the spread and its flag, the stopping rule, out of memory."""
import pytest
import torch

from dcae_ext.bench import timing
from dcae_ext.bench.timing import SPREAD_LIMIT, Stats, Timing, time_interleaved

ONE_RUN_PER_BLOCK = dict(warmup=1, block_seconds=1e-9)  # every call outlasts the block target


class FakeClock:
    """time.perf_counter that advances only when a fake op runs: each call of `op(name)` takes the
    next duration (ms) scripted for that name."""

    def __init__(self, monkeypatch, durations_ms: dict[str, list[float]]):
        self.now, self.left, self.calls = 0.0, {k: list(v) for k, v in durations_ms.items()}, []
        monkeypatch.setattr(timing.time, "perf_counter", lambda: self.now)

    def op(self, name):
        def run():
            self.calls.append(name)
            self.now += self.left[name].pop(0) / 1e3
        return run


def test_stats_report_median_quartiles_min_max_and_flag_a_wide_spread(monkeypatch):
    clock = FakeClock(monkeypatch, {"op": [1000, 10, 12, 11, 30, 9]})  # a cold first call, then 5 blocks
    stats, oom = time_interleaved({"op": clock.op("op")}, "cpu",
                                  Timing(min_blocks=5, max_blocks=5, **ONE_RUN_PER_BLOCK))
    spread = stats["op"].as_dict()
    assert not oom and spread["blocks"] == 5 and spread["runs_per_block"] == 1
    assert spread["median_ms"] == pytest.approx(11) and stats["op"].median == pytest.approx(11)
    assert (spread["min_ms"], spread["max_ms"]) == pytest.approx((9, 30))  # the warm-up's 1000 is not a sample
    assert (spread["q1_ms"], spread["q3_ms"], spread["iqr_ms"]) == pytest.approx((10, 12, 2))
    assert stats["op"].noisy  # IQR 2 ms > 10% of 11 ms


def test_spread_flag_threshold():
    assert not Stats((100.0, 100.0, 104.0, 106.0, 110.0), 1).noisy  # IQR 6 = 5.8% of 104
    assert Stats((100.0, 100.0, 104.0, 112.0, 120.0), 1).noisy  # IQR 12 = 11.5%
    assert Stats((5.0,), 1).iqr == 0 and SPREAD_LIMIT == 0.10


def test_a_quiet_timing_stops_at_min_blocks_and_a_noisy_one_runs_to_the_budget(monkeypatch):
    clock = FakeClock(monkeypatch, {"quiet": [5] + [10.0] * 40, "noisy": [5] + [10.0, 20.0] * 20})
    settings = Timing(min_blocks=5, max_blocks=40, max_seconds=10.0, **ONE_RUN_PER_BLOCK)
    quiet, _ = time_interleaved({"quiet": clock.op("quiet")}, "cpu", settings)
    assert len(quiet["quiet"].block_ms) == 5 and not quiet["quiet"].noisy
    noisy, _ = time_interleaved({"noisy": clock.op("noisy")}, "cpu", settings)
    assert len(noisy["noisy"].block_ms) == 40 and noisy["noisy"].noisy
    short = Timing(min_blocks=5, max_blocks=40, max_seconds=0.095, **ONE_RUN_PER_BLOCK)
    clock = FakeClock(monkeypatch, {"noisy": [5] + [10.0, 20.0] * 20})
    budget, _ = time_interleaved({"noisy": clock.op("noisy")}, "cpu", short)
    assert len(budget["noisy"].block_ms) == 7  # the 95 ms budget is spent during the 7th (10+20+10+20+10+20+10)


def test_implementations_alternate_within_each_round_and_the_first_rotates(monkeypatch):
    clock = FakeClock(monkeypatch, {"fast": [1.0] * 10, "reference": [3.0] * 10})
    stats, _ = time_interleaved({"fast": clock.op("fast"), "reference": clock.op("reference")}, "cpu",
                                Timing(min_blocks=4, max_blocks=4, **ONE_RUN_PER_BLOCK))
    timed = clock.calls[2:]  # after one warm-up call each
    assert timed == ["fast", "reference", "reference", "fast", "fast", "reference", "reference", "fast"]
    assert stats["fast"].median == pytest.approx(1.0) and stats["reference"].median == pytest.approx(3.0)


def test_a_block_runs_the_call_enough_times_to_last_block_seconds(monkeypatch):
    clock = FakeClock(monkeypatch, {"op": [0.5] * 200})
    stats, _ = time_interleaved({"op": clock.op("op")}, "cpu",
                                Timing(warmup=1, min_blocks=3, max_blocks=3, block_seconds=0.005))
    assert stats["op"].runs_per_block == 10 and len(clock.calls) == 1 + 3 * 10
    assert stats["op"].median == pytest.approx(0.5)  # per call, not per block


def test_an_implementation_out_of_memory_is_dropped_and_the_others_go_on(monkeypatch):
    clock = FakeClock(monkeypatch, {"fast": [1.0] * 10})

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    def broken():
        raise RuntimeError("shape mismatch")

    stats, oom = time_interleaved({"fast": clock.op("fast"), "reference": out_of_memory}, "cpu",
                                  Timing(min_blocks=3, max_blocks=3, **ONE_RUN_PER_BLOCK))
    assert oom == {"reference"} and list(stats) == ["fast"] and len(stats["fast"].block_ms) == 3
    with pytest.raises(RuntimeError, match="shape mismatch"):
        time_interleaved({"broken": broken}, "cpu", Timing(min_blocks=1, max_blocks=1))


@pytest.mark.parametrize("error,oom", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (ValueError("out of memory"), False),
])
def test_cublas_and_cudnn_allocation_failures_count_as_out_of_memory(error, oom):
    # near the memory limit the K = 2^20 IBQ reference fails inside cuBLAS; that is a result, not a crash
    assert timing.is_oom(error) is oom
