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


def max_difference(stock, fast, run, x):
    """||fast - stock|| / ||stock|| of the output and of the input's gradient (the tests' measure)."""
    results = []
    for model in (stock, fast):
        leaf = x.detach().clone().requires_grad_(True)
        out = run(model, leaf)
        out.square().mean().backward()
        results.append((out.detach(), leaf.grad))
    return [((a - b).norm() / b.norm()).item() for a, b in zip(results[1], results[0])]


def main() -> None:
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(**SANA).eval()
    vae = AutoencoderDC(**VAE).eval()
    caption = torch.randn(1, 20, SANA["caption_channels"])
    timestep = torch.tensor([500])
    checks = [
        ("Sana transformer", transformer, torch.randn(1, 8, 16, 16),
         lambda model, x: model(x, caption, timestep).sample),
        ("AutoencoderDC encode+decode", vae, torch.randn(1, 3, 64, 64), lambda model, x: model(x).sample),
    ]
    for name, stock, x, run in checks:
        fast = copy.deepcopy(stock)
        print(accelerate(fast))
        output, gradient = max_difference(stock, fast, run, x)
        print(f"{name}: difference from stock, relative: output {output:.1e}, input gradient {gradient:.1e}")
        print(restore(fast), end="\n\n")


if __name__ == "__main__":
    main()
