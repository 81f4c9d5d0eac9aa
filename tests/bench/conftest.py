"""Shared fixtures of the benchmark tests."""
import pytest

from dcae_ext.bench.records import normalize


def _spread(median, relative_iqr):
    iqr = median * relative_iqr
    return {"median_ms": median, "q1_ms": median - iqr / 2, "q3_ms": median + iqr / 2, "iqr_ms": iqr,
            "min_ms": median * 0.9, "max_ms": median * 1.5, "blocks": 7, "runs_per_block": 1}


def _record(op, impl, shape, fwd, fwdbwd=None, relative_iqr=None, peak=1.0, oom=False, date="2026-11-29", **extra):
    record = {"op": op, "impl": impl, "device": "cpu", "device_name": "x86_64", "dtype": "float32", "shape": shape,
              "fwd_ms": fwd, "fwdbwd_ms": fwdbwd, "peak_mem_mb": peak, "oom": oom, "torch": "2.14.1",
              "cuda": None, "date": date + "T09:00:00+00:00", **extra}
    if relative_iqr is not None:
        record.update(schema=2, fwd_spread=_spread(fwd, relative_iqr),
                      fwdbwd_spread=_spread(fwdbwd, relative_iqr) if fwdbwd else None)
    return record


@pytest.fixture
def fake_records():
    """Shortcuts measured twice (the later run wins); linear attention with an old, spread-less record;
    IBQ whose reference ran out of memory."""
    down, up = {"stage": "down0", "residual": True}, {"stage": "up0", "residual": True}
    return [
        _record("pixel_unshuffle_mean", "fast", down, 9.0, 90.0, 0.01, date="2026-11-27"),
        _record("pixel_unshuffle_mean", "reference", down, 9.0, 90.0, 0.01, date="2026-11-27"),
        _record("pixel_unshuffle_mean", "fast", down, 1.0, 4.0, 0.02, fwd_fraction_of_limit=0.05,
                fwdbwd_fraction_of_limit=0.25),
        _record("pixel_unshuffle_mean", "reference", down, 2.0, 5.0, 0.03, peak=3.0),
        _record("pixel_shuffle_repeat", "fast", up, 1.0, 2.0, 0.25, fwd_fraction_of_limit=0.009,
                fwdbwd_fraction_of_limit=0.5),
        _record("pixel_shuffle_repeat", "reference", up, 1.4, 1.6, 0.04, peak=1.5),
        normalize(_record("linear_attention", "fast", {"case": "dcae_stage_16x16", "layout": "separate"}, 1.0, 2.0,
                          fraction_of_limit=0.3)),
        normalize(_record("linear_attention", "reference", {"case": "dcae_stage_16x16", "layout": "separate"},
                          1.5, 5.0)),
        _record("ibq_quantize", "fast", {"N": 8, "K": 64, "D": 4}, 3.0, 6.0, 0.05, fwd_fraction_of_limit=0.4,
                fwdbwd_fraction_of_limit=0.5),
        _record("ibq_quantize", "reference", {"N": 8, "K": 64, "D": 4}, None, peak=None, oom=True, schema=2),
    ]


@pytest.fixture
def ibq_sweep_records():
    """An IBQ K sweep with the SDPA baseline: fast, reference and sdpa at K = 2^14 and 2^16 (N = 8192),
    then K = 2^20 at N = 16384, where the reference ran out of memory."""
    records = []
    for n, k, scale in ((8192, 2**14, 1.0), (8192, 2**16, 4.0), (16384, 2**20, 128.0)):
        shape = {"N": n, "K": k, "D": 256}
        records += [
            _record("ibq_quantize", "fast", shape, 1.0 * scale, 2.0 * scale, 0.02, peak=100.0),
            _record("ibq_quantize", "reference", shape, None, peak=None, oom=True, schema=2) if k == 2**20 else
            _record("ibq_quantize", "reference", shape, 5.0 * scale, 12.0 * scale, 0.02, peak=2000.0 * scale),
            _record("ibq_quantize", "sdpa", shape, 1.5 * scale, 3.0 * scale, 0.25, peak=150.0,
                    sdpa_backend="FLASH_ATTENTION"),
        ]
    return records
