"""The residual MLP denoiser of two-dimensional data (models/mlp.py): its input check.

Its training and sampling are checked end to end in test_fit.py.
"""

import pytest
import torch

from diffusion_lib.models import MLPDenoiser


def test_mlp_denoiser_checks_the_data_dimension(mentions):
    model = MLPDenoiser(dim=2, width=8, depth=1, time_dim=8)
    with pytest.raises(ValueError, match=mentions("x", "(4, 3)", "2")):
        model(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
