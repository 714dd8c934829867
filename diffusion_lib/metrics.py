"""Distances between sets of samples, and the classifier-based measures of generated images (FID among them)."""

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


def nearest_neighbours(x, reference, chunk_size=1024):
    """For each row of x (n, d): the Euclidean distance to its nearest row of reference (m, d), and that row's index.

    Works through x in chunks so that the (chunk, m) distance matrix stays small.
    """
    if x.dim() != 2 or reference.dim() != 2 or x.shape[1] != reference.shape[1]:
        raise ValueError(
            f"x and reference must have shapes (n, d) and (m, d), got {tuple(x.shape)} and {tuple(reference.shape)}"
        )
    reference = reference.to(x.dtype)
    nearest = [torch.cdist(chunk, reference).min(dim=1) for chunk in x.split(chunk_size)]
    return torch.cat([n.values for n in nearest]), torch.cat([n.indices for n in nearest])


def nearest_distances(x, reference):
    """Euclidean distance from each row of x (n, d) to its nearest row of reference (m, d)."""
    return nearest_neighbours(x, reference)[0]


def gaussian_statistics(features):
    """Mean and (unbiased) covariance of the rows of features (n, d), in float64."""
    features = features.double()
    return features.mean(dim=0), torch.cov(features.T)


def frechet_distance(mean1, cov1, mean2, cov2):
    """||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^(1/2) S_2 S_1^(1/2))^(1/2)), eq. `frechet-distance`.

    The squared 2-Wasserstein distance between N(mu_1, S_1) and N(mu_2, S_2),
    in float64. The trace of the square root is computed as the nuclear norm
    of M = S_1^(1/2) S_2^(1/2), the sum of its singular values: S_1^(1/2) S_2
    S_1^(1/2) = M M^T, whose eigenvalues are the squared singular values of M.
    Swapping the two Gaussians replaces M by M^T, which has the same singular
    values, so the distance is symmetric by construction; and small singular
    values of a rank-deficient M come out near rounding, where square roots of
    rounding-sized eigenvalues would add errors of order sqrt(rounding).
    """
    cov1, cov2 = cov1.double(), cov2.double()
    trace_root = torch.linalg.svdvals(_symmetric_sqrt(cov1) @ _symmetric_sqrt(cov2)).sum()
    difference = (mean1 - mean2).double()
    return (difference @ difference + cov1.trace() + cov2.trace() - 2 * trace_root).item()


def _symmetric_sqrt(matrix):
    """The symmetric square root of a symmetric positive semi-definite matrix.

    Eigenvalues within rounding of zero (below d times machine epsilon times
    the largest) are set to 0: they are rounding, and their square roots would
    be errors of order sqrt(rounding).
    """
    values, vectors = torch.linalg.eigh(matrix)
    rounding = len(values) * torch.finfo(values.dtype).eps * values.abs().max()
    root = vectors @ torch.diag(torch.where(values > rounding, values, 0).sqrt()) @ vectors.T
    return (root + root.T) / 2


def fid(features1, features2):
    """The Frechet distance between Gaussians fitted to two sets of features (n1, d) and (n2, d), eq. `fid`."""
    if features1.dim() != 2 or features2.dim() != 2 or features1.shape[1] != features2.shape[1]:
        raise ValueError(
            f"features must have shapes (n1, d) and (n2, d), got {tuple(features1.shape)} and {tuple(features2.shape)}"
        )
    return frechet_distance(*gaussian_statistics(features1), *gaussian_statistics(features2))


@torch.no_grad()
def classify(classifier, images, batch_size=1000):
    """Features (n, d) and class probabilities (n, k) of images from a classifier in eval mode.

    The classifier provides ``features(x)`` (its penultimate layer) and
    ``logits(features)``, as :class:`~diffusion_lib.models.classifier.Classifier` does.
    """
    features = torch.cat([classifier.features(batch) for batch in images.split(batch_size)])
    return features, classifier.logits(features).softmax(dim=1)


def confident_fraction(probabilities, threshold=0.9):
    """The fraction of rows whose largest class probability is at least threshold."""
    return (probabilities.max(dim=1).values >= threshold).float().mean().item()


def class_fractions(probabilities):
    """The fraction of rows assigned (by largest probability) to each class, a tensor (k,)."""
    counts = torch.bincount(probabilities.argmax(dim=1), minlength=probabilities.shape[1])
    return counts.double() / len(probabilities)


def polynomial_kernel(a, b):
    """k(a, b) = (a . b / d + 1)^3, the kernel of KID (Binkowski et al. 2018), for rows of a (n, d) and b (m, d)."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def _kernel_row_sums(a, b, chunk_size=2048):
    """Row sums of the kernel matrix k(a_i, b_j), computed chunk by chunk (the matrix is never stored whole)."""
    return torch.cat([polynomial_kernel(chunk, b).sum(dim=1) for chunk in a.split(chunk_size)])


def kid(features1, features2):
    """The kernel inception distance: the unbiased estimate of MMD^2 with the polynomial kernel, eq. `kid`, and
    its jackknife standard error. Returns (estimate, standard_error), in float64.

    MMD^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j). Leaving out one
    point changes each sum by that point's row sum, so all the leave-one-out estimates cost no more than the
    estimate itself; the jackknife variances of the two samples add.
    """
    x, y = features1.double(), features2.double()
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 3:
        raise ValueError(
            f"features must have shapes (n1, d) and (n2, d) with n1, n2 >= 3, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n, m = len(x), len(y)
    d = x.shape[1]
    xx_rows = _kernel_row_sums(x, x) - (x.pow(2).sum(1) / d + 1) ** 3  # without the diagonal k(x_i, x_i)
    yy_rows = _kernel_row_sums(y, y) - (y.pow(2).sum(1) / d + 1) ** 3
    xy_rows, yx_rows = _kernel_row_sums(x, y), _kernel_row_sums(y, x)
    xx, yy, xy = xx_rows.sum(), yy_rows.sum(), xy_rows.sum()
    estimate = xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2 * xy / (n * m)
    without_x = (xx - 2 * xx_rows) / ((n - 1) * (n - 2)) + yy / (m * (m - 1)) - 2 * (xy - xy_rows) / ((n - 1) * m)
    without_y = xx / (n * (n - 1)) + (yy - 2 * yy_rows) / ((m - 1) * (m - 2)) - 2 * (xy - yx_rows) / (n * (m - 1))
    variance = (n - 1) / n * (without_x - without_x.mean()).pow(2).sum()
    variance += (m - 1) / m * (without_y - without_y.mean()).pow(2).sum()
    return estimate.item(), variance.sqrt().item()


def precision_recall(real, generated, k=3):
    """Improved precision and recall (Kynkaanniemi et al. 2019) of feature sets (n, d).

    Each set's manifold is the union of balls around its points with radius the distance to the k-th nearest
    other point of the set. Precision: the fraction of generated points inside the real manifold; recall: the
    fraction of real points inside the generated one.
    """

    def radii(points):
        return torch.cat([torch.cdist(chunk, points).kthvalue(k + 1, dim=1).values for chunk in points.split(1024)])

    def inside(points, reference, reference_radii):
        return torch.cat(
            [(torch.cdist(chunk, reference) <= reference_radii).any(dim=1) for chunk in points.split(1024)]
        )

    real, generated = real.double(), generated.double()
    precision = inside(generated, real, radii(real)).double().mean().item()
    recall = inside(real, generated, radii(generated)).double().mean().item()
    return precision, recall


def copy_ratios(samples, reference):
    """For each row of samples (n, d): its distance to the nearest row of reference over that to the second
    nearest, and the nearest row's index. A ratio near 0 means a sample sits on one reference point; a sample on a
    point that the reference holds twice has ratio 0 (not 0/0)."""
    if samples.dim() != 2 or reference.dim() != 2 or samples.shape[1] != reference.shape[1] or len(reference) < 2:
        raise ValueError(
            f"samples and reference must have shapes (n, d) and (m >= 2, d), got {tuple(samples.shape)} and "
            f"{tuple(reference.shape)}"
        )
    reference = reference.to(samples.dtype)
    nearest = [torch.cdist(chunk, reference).topk(2, dim=1, largest=False) for chunk in samples.split(1024)]
    distances = torch.cat([found.values for found in nearest])
    ratios = torch.where(distances[:, 0] == 0, 0.0, distances[:, 0] / distances[:, 1])
    return ratios, torch.cat([found.indices[:, 0] for found in nearest])


def copied_fraction(samples, reference, threshold=1 / 3):
    """The fraction of samples whose nearest/second-nearest distance ratio to reference is below threshold
    (a copy, after Gu et al. 2023)."""
    return (copy_ratios(samples, reference)[0] < threshold).double().mean().item()


def mean_pairwise_distance(x):
    """The mean Euclidean distance between two different rows of x (n >= 2, d): the spread of a set of samples, whose
    fall under guidance measures the variety it costs."""
    if x.dim() != 2 or len(x) < 2:
        raise ValueError(f"x must have shape (n >= 2, d), got {tuple(x.shape)}")
    n = len(x)
    return (torch.pdist(x).sum() * 2 / (n * (n - 1))).item()


def cosine_similarity(a, b):
    """Row by row, a_i . b_i / (|a_i| |b_i|) for a and b of shape (n, d): 1 for rows pointing the same way, 0 for
    orthogonal ones. Subtract a common centre (the data's mean) first to compare images rather than their shared
    background."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both have shape (n, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a, b.to(a.dtype), dim=1)


def r_squared(estimate, reference):
    """Per item of a batch: 1 - |reference - estimate|^2 / |reference - its mean|^2, how much of reference's
    variation around its own mean the estimate explains (1: all of it; 0: no more than the mean does)."""
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate and reference must have one shape, got {tuple(estimate.shape)} and "
                         f"{tuple(reference.shape)}")  # fmt: skip
    residual = (reference - estimate).flatten(1).pow(2).sum(1)
    spread = (reference.flatten(1) - reference.flatten(1).mean(dim=1, keepdim=True)).pow(2).sum(1)
    return 1 - residual / spread
