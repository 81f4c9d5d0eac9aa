"""The IBQ training recipe against the official code (seed_voken_ibq.py): one training step of the
Trainer with the IBQ defaults (discriminator first, non-saturating generator loss, hinge
discriminator loss with LeCAM, Adam (0.5, 0.9), no clipping) gives the official losses and weights,
in float64."""
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import seed_voken_ibq as official
from dcae_ext.models import IBQTokenizer
from dcae_ext.models.ibq.tokenizer import IBQConfig
from dcae_ext.models.ibq.vqgan import VQGANConfig
from dcae_ext.train.config import NAMED_CONFIGS, make_config
from dcae_ext.train.losses import hinge_discriminator_loss, non_saturating_generator_loss
from dcae_ext.train.trainer import Trainer, lr_factor

DDCONFIG = dict(z_channels=32, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2], num_res_blocks=1,
                attn_resolutions=[8], dropout=0.0)


class Images(Dataset):
    """16 px: the 2-layer discriminator's patch map is 2x2, so averaging the logits per image (the
    official generator loss) differs from averaging over all patches."""

    def __init__(self, count=4, size=16):
        self.images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        return self.images[int(key) % len(self.images)]


class Perceptual(nn.Module):
    """A fixed stand-in for LPIPS (no weights offline): per-image mean squared feature distance,
    shaped (B, 1, 1, 1) as the official LPIPS returns it, or its batch mean as dcae_ext's does."""

    def __init__(self, batch_mean):
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.batch_mean = batch_mean

    def forward(self, a, b):
        per_image = ((self.features(a) - self.features(b)) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        return per_image.mean() if self.batch_mean else per_image


def _official_names(state):
    state = dict(state)
    state["quantize.embedding.weight"] = state.pop("quantizer.codebook")
    return state


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _models(entropy_weight):
    torch.manual_seed(0)
    config = IBQConfig(VQGANConfig(**DDCONFIG), num_codes=64, dim=8, entropy_weight=entropy_weight)
    ours = IBQTokenizer(config).double()
    theirs = official.IBQ(DDCONFIG, n_embed=64, embed_dim=8).double()
    theirs.load_state_dict(_official_names(ours.state_dict()))
    return ours, theirs


@pytest.mark.filterwarnings("ignore:LPIPS. no trunk weights given")  # random trunk on both sides, on purpose
@pytest.mark.parametrize("entropy_weight", [0.0, 0.05])
def test_one_training_step_matches_the_official_code(entropy_weight, tmp_path):
    ours, theirs = _models(entropy_weight)
    # a paper preset: its recipe is the official one (the tiny preset's is for short runs); the model is `ours`
    config = make_config("ibq", preset="ibq-f16-16384", steps=2, batch_size=4, resolution=16, out=str(tmp_path),
                         device="cpu", precision="fp32",
                         num_workers=0, disc_channels=8, disc_layers=2, ema_decay=0.0, log_every=1,
                         checkpoint_every=0, image_every=0, lpips_weight=1.0, lpips_net="alex")
    assert (config.disc_first, config.gan_generator_loss, config.grad_clip, config.lr_schedule) == \
        (True, "non_saturating", 0.0, "constant")
    trainer = Trainer(config, model=ours, dataset=Images())
    trainer.perceptual = Perceptual(batch_mean=True).double()
    trainer.discriminator.double()
    perceptual = Perceptual(batch_mean=False).double()
    perceptual.load_state_dict(trainer.perceptual.state_dict())
    discriminator = official.NLayerDiscriminator(3, 8, 2).double()
    discriminator.load_state_dict(trainer.discriminator.net.state_dict())
    loss = official.VQLPIPSWithDiscriminator(perceptual, discriminator, entropy_loss_weight=entropy_weight)
    opt_gen, opt_disc = official.optimizers(theirs, loss, lr=config.lr)

    x = Images().images.double()
    for step in range(2):  # the second step sees Adam's moments and LeCAM's EMA from the first
        metrics = trainer.train_step([x])
        aeloss, discloss = official.training_step(theirs, loss, opt_gen, opt_disc, x, step)
        assert metrics["loss"] == pytest.approx(float(aeloss), rel=1e-12, abs=1e-14)
        assert metrics["loss_disc"] + config.lecam_weight * metrics["loss_lecam"] == \
            pytest.approx(float(discloss), rel=1e-12, abs=1e-14)
    mine = ours.state_dict()
    for name, value in _official_names(mine).items():
        assert _relative(value, theirs.state_dict()[name]) < 1e-10, name
    for name, value in trainer.discriminator.net.state_dict().items():
        if value.is_floating_point():
            assert _relative(value, discriminator.state_dict()[name]) < 1e-10, name


def test_generator_and_discriminator_losses_match_in_float64():
    generator = torch.Generator().manual_seed(0)
    for scale in (1.0, 30.0, 1e4):  # huge logits: the official form is the stable softplus
        fake = torch.randn(5, 1, 6, 7, generator=generator, dtype=torch.float64) * scale
        real = torch.randn(5, 1, 6, 7, generator=generator, dtype=torch.float64) * scale
        assert float(non_saturating_generator_loss(fake)) == \
            pytest.approx(float(official.non_saturate_gen_loss(fake)), rel=1e-14, abs=1e-300)
        assert float(hinge_discriminator_loss(real, fake)) == \
            pytest.approx(float(official.hinge_d_loss(real, fake)), rel=1e-14)
    fake = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    grad_ours, = torch.autograd.grad(non_saturating_generator_loss(fake), fake)
    grad_theirs, = torch.autograd.grad(official.non_saturate_gen_loss(fake), fake)
    assert _relative(grad_ours, grad_theirs) < 1e-14


def test_paper_recipe_is_the_official_config():
    """configs/IBQ/gpu/imagenet_ibqgan_16384.yaml: 64 GPUs x 4 images, 330 epochs of ImageNet at
    256 a step, lr 1e-4 x0.1 after epochs 250 and 300, 16-mixed precision."""
    config = make_config(file="ibq-paper-16384")
    epoch = 5005
    assert (config.preset, config.resolution, config.batch_size, config.precision) == ("ibq-f16-16384", 256, 4, "fp16")
    assert (config.lr, config.betas, config.disc_betas, config.weight_decay) == (1e-4, (0.5, 0.9), (0.5, 0.9), 0.0)
    assert (config.gan_weight, config.lecam_weight, config.adaptive_gan_weight, config.disc_start) == \
        (0.1, 0.05, False, 0)
    assert (config.steps, config.lr_drop_steps) == (330 * epoch, (250 * epoch, 300 * epoch))
    assert not config.sync_batchnorm  # Lightning leaves the discriminator's BatchNorm per process
    factors = [lr_factor(step, config.warmup_steps, config.steps, config.min_lr_ratio, config.lr_schedule,
                         config.lr_drop_steps, config.lr_drop_rate) for step in (0, 250 * epoch - 1, 250 * epoch,
                                                                                 300 * epoch, config.steps - 1)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.01])
    assert set(NAMED_CONFIGS) == {"ibq-paper-16384", "ibq-paper-262144"}
