"""The networks: STLE (video <-> latents), the text ensemble, the DiT and its attention
backends with the DSA op, the pixel refiner, the vocabulary of edits, and `StreamEditModel`,
which holds one of each (what a checkpoint stores)."""
from .streamedit import StreamEditModel, count_parameters

__all__ = ["StreamEditModel", "count_parameters"]
