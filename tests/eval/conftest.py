"""A small feature extractor for FID tests: built here, no weights to fetch."""
import pytest
import torch


class SmallFeatures(torch.nn.Module):
    """A fixed random conv net: per-channel mean and std of 8 feature maps (16 features)."""

    num_features = 16

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.5)
            self.conv.bias.zero_()

    def forward(self, images):
        maps = torch.tanh(self.conv(images.float()))
        return torch.cat([maps.mean((2, 3)), maps.std((2, 3))], dim=1)


@pytest.fixture
def small_features():
    return SmallFeatures()
