"""Distances between two sets of samples."""

import torch


def sliced_wasserstein(x, y, num_projections=256, generator=None):
    """Sliced 2-Wasserstein distance between equal-sized samples x, y of shape (n, d), eq. `sliced-wasserstein`.

    Projects both onto random unit directions, where the 1-D optimal transport
    pairs sorted values, and returns the root mean squared gap over directions.
    """
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both have shape (n, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    directions = torch.randn(x.shape[1], num_projections, generator=generator, dtype=x.dtype)
    directions = directions / directions.norm(dim=0, keepdim=True)
    x_sorted = (x @ directions).sort(dim=0).values
    y_sorted = (y.to(x.dtype) @ directions).sort(dim=0).values
    return (x_sorted - y_sorted).pow(2).mean().sqrt().item()


def mmd(x, y, bandwidths=(0.05, 0.1, 0.2, 0.5, 1.0)):
    """Unbiased estimate of the squared maximum mean discrepancy with a sum of Gaussian kernels, eq. `mmd`."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have shapes (n, d) and (m, d), got {tuple(x.shape)} and {tuple(y.shape)}")

    def kernel(a, b):
        squared = torch.cdist(a, b).pow(2)
        # Exponents below -80 give kernel values below 2e-35; clamping them keeps exp off its slow underflow path.
        return sum(torch.exp((-squared / (2 * h**2)).clamp(min=-80)) for h in bandwidths)

    def off_diagonal_mean(k):
        n = k.shape[0]
        return (k.sum() - k.diagonal().sum()) / (n * (n - 1))

    return (off_diagonal_mean(kernel(x, x)) + off_diagonal_mean(kernel(y, y)) - 2 * kernel(x, y).mean()).item()


def nearest_distances(x, reference):
    """Euclidean distance from each row of x (n, d) to its nearest row of reference (m, d)."""
    if x.dim() != 2 or reference.dim() != 2 or x.shape[1] != reference.shape[1]:
        raise ValueError(
            f"x and reference must have shapes (n, d) and (m, d), got {tuple(x.shape)} and {tuple(reference.shape)}"
        )
    return torch.cdist(x, reference.to(x.dtype)).min(dim=1).values
