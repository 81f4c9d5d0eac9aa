"""Encoding a dataset once: images -> latents (DC-AE) or tokens (IBQ) in resumable safetensors
shards, over one process or many (torchrun), and back to images."""
