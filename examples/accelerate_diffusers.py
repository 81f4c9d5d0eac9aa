"""dcae-ext's fused ops inside diffusers' Sana transformer and AutoencoderDC, offline on random weights.

    python examples/accelerate_diffusers.py

Builds small random-weight versions of the two models (no download), accelerates a copy of each
with `dcae_ext.integrations.diffusers.accelerate`, prints the summary and the largest difference
from the stock model (output, and the gradient of the input), then restores the copy. With real
weights the same call takes a pipeline: `accelerate(SanaPipeline.from_pretrained(local_dir))`.
Needs `pip install dcae-ext[diffusers]`.
"""
import copy

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel

from dcae_ext.integrations.diffusers import accelerate, restore

SANA = dict(in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=32, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=64, cross_attention_dim=128, caption_channels=32,
            sample_size=16, patch_size=1)
VAE = dict(latent_channels=8, attention_head_dim=8, encoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock"],
           decoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock"],
           encoder_block_out_channels=[16, 32, 64], decoder_block_out_channels=[16, 32, 64],
           encoder_layers_per_block=[1, 1, 2], decoder_layers_per_block=[1, 1, 2],
           encoder_qkv_multiscales=[[], [], [5]], decoder_qkv_multiscales=[[], [], [5]])


def output_and_gradient(model, run, x):
    leaf = x.detach().clone().requires_grad_(True)
    out = run(model, leaf)
    out.square().mean().backward()
    return out.detach().double(), leaf.grad.double()


def relative(a, b):
    """||a - b|| / ||b|| of the output and of the input's gradient (the tests' measure)."""
    return [((x - y).norm() / y.norm()).item() for x, y in zip(a, b)]


def main() -> None:
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(**SANA).eval()
    vae = AutoencoderDC(**VAE).eval()
    caption = torch.randn(1, 20, SANA["caption_channels"])
    timestep = torch.tensor([500])
    checks = [
        ("Sana transformer", transformer, torch.randn(1, 8, 16, 16),
         lambda model, x: model(x, caption.to(x.dtype), timestep).sample),
        ("AutoencoderDC encode+decode", vae, torch.randn(1, 3, 64, 64), lambda model, x: model(x).sample),
    ]
    for name, stock, x, run in checks:
        fast = copy.deepcopy(stock)
        print(accelerate(fast))
        want, got = output_and_gradient(stock, run, x), output_and_gradient(fast, run, x)
        want64 = output_and_gradient(copy.deepcopy(stock).double(), run, x.double())
        output, gradient = relative(got, want)
        own_output, own_gradient = relative(want, want64)
        print(f"{name}: difference from stock, relative: output {output:.1e}, input gradient {gradient:.1e} "
              f"(stock float32 from stock float64: {own_output:.1e}, {own_gradient:.1e})")
        print(restore(fast), end="\n\n")


if __name__ == "__main__":
    main()
