"""Denoising networks: callables (x_t, t) -> predicted noise."""

from .embeddings import TimeEmbedding, sinusoidal_embedding
from .mlp import MLPDenoiser

__all__ = ["MLPDenoiser", "TimeEmbedding", "sinusoidal_embedding"]
