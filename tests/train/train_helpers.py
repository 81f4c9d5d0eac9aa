"""Shared by the trainer tests: a synthetic dataset and a micro DC-AE config."""
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dcae_ext.models.dcae.config import DCAEConfig


class SmoothImages(Dataset):
    """`count` smooth random images (bilinear 4x4 noise), indexed by sample key like CropDataset."""

    def __init__(self, count=16, resolution=16):
        self.count, self.resolution = count, resolution

    def __len__(self):
        return self.count

    def __getitem__(self, key):
        generator = torch.Generator().manual_seed(int(key) % self.count)
        coarse = torch.rand(1, 3, 4, 4, generator=generator) * 2 - 1
        return F.interpolate(coarse, size=self.resolution, mode="bilinear", align_corners=False)[0]


def micro_dcae_config(norm="rms_norm"):
    """Two stages of width 8, factor 2: a real DCAE small enough for many steps on a loaded CPU."""
    return DCAEConfig(latent_channels=4, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
                      encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                      encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                      encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()),
                      decoder_norm_types=norm, decoder_act_fns="silu")


