"""LPIPS (the `lpips` package's network) built from local weights only: nothing is downloaded.
Used by the trainers' perceptual loss and by the LPIPS metric."""
from __future__ import annotations

import glob
import os
import warnings

import torch
from torch import nn

LPIPS_WEIGHTS_ENV = "DCAE_EXT_LPIPS_WEIGHTS"


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
