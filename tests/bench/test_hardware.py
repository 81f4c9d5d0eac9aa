"""Hardware limits: data-sheet peaks only for GPUs named exactly, the precision torch will use."""
import pytest
import torch

from dcae_ext.bench.hardware import datasheet_limit, probes


def test_datasheet_bandwidth_only_for_exact_names():
    assert datasheet_limit("NVIDIA H200", "memory", torch.bfloat16) == 4800.0
    assert datasheet_limit("NVIDIA H100 80GB HBM3", "memory", torch.bfloat16) == 3350.0
    # Variants with more bandwidth than the card their name contains get their own peaks, or a
    # probe when not listed, never the smaller card's (a fraction above 100%).
    assert datasheet_limit("NVIDIA H100 NVL", "memory", torch.bfloat16) == 3900.0
    assert datasheet_limit("NVIDIA H200 NVL", "matmul", torch.bfloat16) == 835.0  # not the H200 SXM's 989
    assert datasheet_limit("NVIDIA GH200 480GB", "memory", torch.bfloat16) is None
    assert datasheet_limit("NVIDIA A100-SXM4-40GB", "memory", torch.bfloat16) == 1555.0
    assert datasheet_limit(None, "memory", torch.float32) is None  # a CPU


@pytest.fixture
def precision():
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.fp32_precision,
             torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]
    torch.backends.fp32_precision = saved[2]
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved[3], saved[4]


def test_float32_peak_follows_the_math_mode_torch_allows(precision):
    h200 = "NVIDIA H200"
    assert datasheet_limit(h200, "matmul", torch.bfloat16) == 989.0
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = True  # torch's default for convolutions
    assert datasheet_limit(h200, "matmul", torch.float32) == 67.0
    assert datasheet_limit(h200, "conv", torch.float32) == 494.0  # convolutions run in TF32
    torch.backends.cudnn.allow_tf32 = False
    assert datasheet_limit(h200, "conv", torch.float32) == 67.0
    torch.set_float32_matmul_precision("high")
    assert datasheet_limit(h200, "matmul", torch.float32) == 494.0
    torch.set_float32_matmul_precision("medium")  # TF32 on CUDA too
    assert datasheet_limit(h200, "matmul", torch.float32) == 494.0


def test_float32_peak_follows_the_backend_precision_settings(precision):
    # torch's newer per-backend settings; reading the legacy getters after them used to raise
    h200 = "NVIDIA H200"
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert datasheet_limit(h200, "matmul", torch.float32) == 494.0
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    assert datasheet_limit(h200, "matmul", torch.float32) == 67.0
    assert datasheet_limit(h200, "conv", torch.float32) == 67.0
    torch.backends.fp32_precision = "tf32"
    torch.backends.cuda.matmul.fp32_precision = "none"  # inherits the generic setting
    assert datasheet_limit(h200, "matmul", torch.float32) == 494.0


def test_probes_do_the_work_they_claim():
    memory = probes("memory", "cpu", torch.float32, moved_bytes=4096)
    assert {name: work for name, (_, work) in memory.items()} == {"limit: read": 4096.0, "limit: copy": 4096.0}
    for call, _ in memory.values():
        call()
    (gemm, flops), = probes("matmul", "cpu", torch.float32, 0).values()
    assert gemm().shape == (2048, 2048) and flops == 2.0 * 2048**3
