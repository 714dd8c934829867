"""diffusion_lib: the code of the diffusion-models textbook, one concept per module."""

from .elbo import bits_per_dim, gaussian_kl, vlb_terms, vlb_weights
from .losses import l_simple
from .sampling import ddpm_step, sample, sample_loop
from .schedules import NoiseSchedule

__all__ = [
    "NoiseSchedule",
    "bits_per_dim",
    "ddpm_step",
    "gaussian_kl",
    "l_simple",
    "sample",
    "sample_loop",
    "vlb_terms",
    "vlb_weights",
]
__version__ = "0.1.0"
