"""DDP: two CPU processes (gloo, launched by torchrun) with batch B each take the same steps as one
process with batch 2B: DistributedSampler splits each 2B window of the shuffled order between the
ranks, and DDP averages the gradients of the two per-rank means. With the GAN on: the adaptive GAN weight
and LeCAM's EMAs come from both ranks' images (group-norm discriminator: a BatchNorm one normalises each
rank's images apart), and metrics.jsonl logs the losses of the whole batch, not rank 0's half."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dcae_ext.train.trainer import Trainer

from train_helpers import SmoothImages

# the GAN from the first step, with the adaptive weight and LeCAM (group norm: see the docstring)
GAN = dict(gan_weight=0.5, adaptive_gan_weight=True, lecam_weight=0.5, disc_start=0, disc_norm="group",
           disc_channels=8, disc_layers=2)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

WORKER = textwrap.dedent("""
    import os, sys, warnings
    sys.path.insert(0, {here!r})
    import torch
    torch.set_num_threads(1)
    from train_helpers import SmoothImages, micro_dcae_config
    from dcae_ext.models.dcae.model import DCAE
    from dcae_ext.train.config import make_config
    from dcae_ext.train.trainer import Trainer
    config = make_config("dcae", steps=3, batch_size=2, resolution=16, out={out!r}, num_workers=0, device="cpu",
                         lpips_weight=0.0, log_every=1, checkpoint_every=0, image_every=0, lr=1e-2, warmup_steps=0,
                         **{gan!r})
    torch.manual_seed(0)
    trainer = Trainer(config, model=DCAE(micro_dcae_config()), dataset=SmoothImages())
    assert trainer.context.world_size == 2
    trainer.train()
    if trainer.context.is_main:
        state = dict(trainer.model.state_dict(),
                     **{{f"disc.{{k}}": v for k, v in trainer.discriminator.state_dict().items()}})
        torch.save(state, os.path.join({out!r}, "final.pt"))
    torch.distributed.destroy_process_group()
""")


def test_two_gloo_processes_equal_one_with_double_batch(micro_dcae, quick_config, tmp_path):
    script = tmp_path / "worker.py"
    out = str(tmp_path / "ddp")
    script.write_text(WORKER.format(here=HERE, out=out, gan=GAN))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp_state = torch.load(os.path.join(out, "final.pt"))

    single = Trainer(quick_config(steps=3, batch_size=4, lr=1e-2, out=str(tmp_path / "single"), **GAN),
                     model=micro_dcae(), dataset=SmoothImages())
    single.train()
    reference = dict(single.model.state_dict(), **{f"disc.{k}": v for k, v in single.discriminator.state_dict().items()})
    assert ddp_state.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ddp_state[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
    rows = {name: [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
            for name, folder in (("ddp", out), ("single", single.config.out))}
    for ddp_row, single_row in zip(rows["ddp"], rows["single"]):
        for key in ("loss", "loss_l1", "loss_gan", "gan_weight", "loss_disc", "loss_lecam", "grad_norm"):
            assert ddp_row[key] == pytest.approx(single_row[key], rel=1e-4), (ddp_row["step"], key)
    # and the steps did move the weights (the comparison is not between two untouched models)
    torch.manual_seed(0)
    initial = micro_dcae().state_dict()
    assert any((initial[k] - reference[k]).abs().max() > 1e-3 for k in reference)
