"""Generator and discriminator losses: L1/L2, LPIPS (local weights only), hinge GAN, LeCAM,
the adaptive GAN weight of VQGAN."""
from __future__ import annotations

import glob
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

LPIPS_WEIGHTS_ENV = "DCAE_EXT_LPIPS_WEIGHTS"


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return (reconstruction.float() - target.float()).abs().mean()
    if kind == "l2":
        return ((reconstruction.float() - target.float()) ** 2).mean()
    raise ValueError(f"argument 'kind': expected 'l1' or 'l2', got {kind!r}")


def _read_state_dicts(path: str) -> dict:
    files = [path]
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.pth")) + glob.glob(os.path.join(path, "*.pt"))
                       + glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"LPIPS weights: no .pth/.pt/.safetensors file in {path}")
    merged = {}
    for file in files:
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file
            merged.update(load_file(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            merged.update(state.get("state_dict", state) if isinstance(state, dict) else state)
    return merged


class PerceptualLoss(nn.Module):
    """LPIPS of the `lpips` package, built so that nothing is downloaded.

    `weights`: a file or folder holding the trunk (a full LPIPS state dict with `net.sliceK.N.*`
    keys, or torchvision's `features.N.*` keys of the same network) and optionally the linear
    heads (`linK.model.1.weight`; default: the heads the lpips package ships). Without weights
    (None and env DCAE_EXT_LPIPS_WEIGHTS unset) the trunk stays random: only for smoke runs,
    and a loud warning says so. Frozen; inputs in [-1, 1]; returns the batch mean.
    """

    def __init__(self, net: str = "vgg", weights: str | None = None):
        super().__init__()
        import lpips

        weights = weights or os.environ.get(LPIPS_WEIGHTS_ENV) or None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation notice
            self.lpips = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        heads = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", f"{net}.pth")
        self.lpips.load_state_dict(torch.load(heads, map_location="cpu", weights_only=True), strict=False)
        self.pretrained_trunk = weights is not None
        if weights is None:
            warnings.warn(
                "LPIPS: no trunk weights given (--lpips-weights or env DCAE_EXT_LPIPS_WEIGHTS); "
                f"using a RANDOM {net} trunk. The perceptual loss is meaningless: smoke runs only.",
                UserWarning, stacklevel=2)
        else:
            self._load(weights)
        self.lpips.eval()
        for parameter in self.lpips.parameters():
            parameter.requires_grad_(False)

    def _load(self, path: str) -> None:
        state = _read_state_dicts(path)
        own = self.lpips.state_dict()
        # torchvision layout features.N.* -> LPIPS net.sliceK.N.* (slices keep the layer index N)
        by_layer = {key.split(".", 2)[2]: key for key in own if key.startswith("net.slice")}
        mapped = {}
        for key, value in state.items():
            if key in own:
                mapped[key] = value
            elif key.startswith("features.") and key[len("features."):] in by_layer:
                mapped[by_layer[key[len("features."):]]] = value
        trunk = [k for k in own if k.startswith("net.")]
        missing = [k for k in trunk if k not in mapped]
        if missing:
            raise ValueError(f"LPIPS weights {path}: trunk tensors missing: {missing[:4]}"
                             f"{' ...' if len(missing) > 4 else ''}")
        self.lpips.load_state_dict(mapped, strict=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.lpips.eval()  # dropout of the heads stays off
        return self

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips(reconstruction, target).mean()


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.float().mean()


class LeCAM(nn.Module):
    """LeCAM regulariser (Tseng et al. 2021): keeps D's outputs near the EMAs of the other side.
    The EMAs are buffers, so they are checkpointed with the discriminator state."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, mean_real: torch.Tensor, mean_fake: torch.Tensor) -> None:
        self.ema_real.mul_(self.decay).add_((1 - self.decay) * mean_real.float())
        self.ema_fake.mul_(self.decay).add_((1 - self.decay) * mean_fake.float())

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        return (F.relu(logits_real.float() - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - logits_fake.float()).pow(2).mean())


def adaptive_gan_weight(reconstruction_loss: torch.Tensor, gan_loss: torch.Tensor,
                        last_layer: torch.Tensor, scale: float) -> torch.Tensor:
    """VQGAN's balance: scale * |grad rec| / |grad gan| at the decoder's last weight, clamped."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.float().norm() / (gan_grad.float().norm() + 1e-4)
    return (weight.clamp(0.0, 1e4) * scale).detach()
