"""The DC-AE suite races like with like: each case's fast and reference workloads compute the same
images and latents (so a speedup compares the same work), and the official reference of a structured
latent is DC-Gen's (adaptive latent convolutions around diffusers' modules)."""
import pytest
import torch

from dcae_ext.models import DCAE, get_config

pytest.importorskip("diffusers")
from dcae_ext.bench import dcae as suite  # noqa: E402
from dcae_ext.bench.dcae_official import official_decode, official_encode, official_model  # noqa: E402


def _close(ours, theirs):
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


def test_quick_cases_race_the_same_computation():
    cases = suite.cases("cpu", quick=True)
    assert [(c.op, c.shape.get("latent_channels")) for c in cases] == [
        ("dcae_encode_decode", None), ("dcae_encode", None), ("dcae_decode", None), ("dcae_decode", 4)]
    for case in cases:
        torch.manual_seed(0)
        workloads = case.build(torch.device("cpu"), torch.float32)
        assert set(workloads) == {"fast", "reference"}
        _close(workloads["fast"].run_forward(), workloads["reference"].run_forward())
        assert case.work.fwd > 0


def test_full_size_cases_of_the_family():
    cases = suite.cases("cpu", quick=False)
    family = [(c.op, c.shape["model"], c.shape.get("latent_channels")) for c in cases if c.op != "dcae_encode_decode"]
    assert family == [("dcae_encode", "dc-ae-f32c128-1.5", None), ("dcae_decode", "dc-ae-f32c128-1.5", None),
                      ("dcae_decode", "dc-ae-f32c128-1.5", 16), ("dcae_encode", "dc-ae-lite-f32c32-sana-1.1", None),
                      ("dcae_decode", "dc-ae-lite-f32c32-sana-1.1", None)]
    assert [c.shape["resolution"] for c in cases] == [256] + [128] * 5
    lite = [c for c in suite.cases("cpu", quick=False, model="dc-ae-lite-f32c32-sana-1.1")]
    assert [c.op for c in lite] == ["dcae_encode_decode", "dcae_encode", "dcae_decode"]


@torch.no_grad()
def test_the_official_reference_of_a_structured_latent_slices_the_weights():
    config = get_config("dc-ae-f32c128-1.5")  # narrower (widths / 8) and shallower (1 block a stage)
    changes = {}
    for side in ("encoder", "decoder"):
        changes[f"{side}_block_out_channels"] = [w // 8 for w in getattr(config, f"{side}_block_out_channels")]
        changes[f"{side}_layers_per_block"] = [min(d, 1) for d in getattr(config, f"{side}_layers_per_block")]
    config = config.replace(**changes)
    torch.manual_seed(0)
    ours = DCAE(config).eval()
    theirs = official_model(ours)
    x = torch.randn(1, 3, 64, 64)
    _close(ours.encode(x), official_encode(theirs, x))
    _close(ours.encode(x, latent_channels=16), official_encode(theirs, x, 16))
    assert official_encode(theirs, x).shape[1] == 128  # the count is reset after the call
    z = ours.encode(x)
    _close(ours.decode(z[:, :16]), official_decode(theirs, z[:, :16]))
