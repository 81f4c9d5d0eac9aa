"""dcae-ext: fast kernels, models and trainers for DC-AE autoencoders and IBQ tokenizers."""
from dcae_ext import ops

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
