"""Weight formats: DC-AE in diffusers and efficientvit layouts, official IBQ checkpoints, training runs.

These modules read and write files for the model classes; the model classes import nothing from here
at import time, and `dcae_ext.models.loading` is the one entry point that picks a format for a path."""
