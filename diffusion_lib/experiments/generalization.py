"""digits- and roll-generalization: from memorizing to generalizing as the training set grows (Kadkhodaie et al. 2024).

For each training-set size N, two denoisers are trained, with the same step budget, on disjoint training sets of N
points each (the first N of two disjoint halves of the data), and both sample from the same x_T. A model that
memorizes returns its own training points, so the two disagree; models that generalize return the same new point,
so they agree. The sweep is stored for 2-D data (roll-generalization) and for the 8 x 8 digits
(digits-generalization).
"""

import time

import torch

from .. import checkpoints, data, store
from ..fit import fit
from ..losses import denoising_loss
from ..models.mlp import MLPDenoiser
from ..resumable import TimeBudget
from ..sampling import sample
from ..schedules import NoiseSchedule


def disjoint_halves(n, seed):
    """Two disjoint sets of row indices, each half of range(n) (drawn by a seeded permutation)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n // 2], order[n // 2 : 2 * (n // 2)]


@torch.no_grad()
def mean_denoising_loss(model, schedule, x0, draws, seed):
    """L_simple on the points x0 (n, d), estimated with ``draws`` (point, t, eps) triples from a seeded generator:
    the same triples for every model, so that differences between models are not Monte Carlo noise."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(x0), (draws,), generator=generator)
    t = torch.randint(0, schedule.T, (draws,), generator=generator)
    eps = torch.randn((draws, *x0.shape[1:]), generator=generator, dtype=x0.dtype)
    return denoising_loss(model, schedule, x0[rows], t, eps).item()


def train_and_sample(training, test, x_T, schedule, config, seed):
    """Train an MLP denoiser on ``training`` (N, d) for config["steps"] steps, then draw from x_T with DDIM (eta 0).

    Returns the samples and the losses on the training and the test points (the same draws of t and eps)."""
    torch.manual_seed(seed)  # the initial weights
    model = MLPDenoiser(dim=training.shape[1], width=config["width"], depth=config["depth"])
    generator = torch.Generator().manual_seed(seed)
    fit(model, schedule, training, steps=config["steps"], batch_size=config["batch_size"], lr=config["lr"],
        generator=generator)  # fmt: skip
    samples = sample(model, schedule, x_T.shape, sampler="ddim", num_steps=config["sampling_steps"], x_T=x_T)
    losses = {
        f"{split}_loss": mean_denoising_loss(model, schedule, points, config["loss_draws"], seed=config["seed"])
        for split, points in (("train", training), ("test", test))
    }
    return samples, losses


def sweep_sizes(points, test, schedule, config, run=None, time_budget=None, progress=print):
    """For each N in config["sizes"]: train two models on the first N points of each of two disjoint halves of
    ``points`` (n, d) and draw config["samples"] samples from each, from the same x_T.

    Returns {"samples": (len(sizes), 2, samples, d), "train_loss", "test_loss": (len(sizes), 2), "halves": (2, n //
    2)}, or None when the time budget ran out first. With ``run`` (a folder) each finished model is saved there and
    skipped when the sweep is run again.
    """
    budget = TimeBudget(time_budget)
    halves = torch.stack(disjoint_halves(len(points), config["seed"]))
    x_T = torch.randn(config["samples"], points.shape[1], generator=torch.Generator().manual_seed(config["seed"]))
    found = []
    for i, size in enumerate(config["sizes"]):
        for half in (0, 1):
            file = None if run is None else run / f"N{size}_half{half}.safetensors"
            if file is not None and file.exists():
                found.append(checkpoints.load(file))
                continue
            if budget.spent():
                return None
            model_started = time.perf_counter()
            training = points[halves[half, :size]]
            samples, losses = train_and_sample(training, test, x_T, schedule, config, seed=1000 * i + half)
            losses["seconds"] = time.perf_counter() - model_started
            if file is not None:
                checkpoints.save(file, {"samples": samples}, losses)
            found.append(({"samples": samples}, losses))
            progress(f"N = {size}, half {half}: test loss {losses['test_loss']:.4f}, {losses['seconds']:.1f} s")
    shape = (len(config["sizes"]), 2)
    return {
        "samples": torch.stack([tensors["samples"] for tensors, _ in found]).reshape(*shape, *x_T.shape),
        **{key: torch.tensor([meta[key] for _, meta in found]).reshape(shape) for key in ("train_loss", "test_loss")},
        "halves": halves,
        "seconds": sum(meta["seconds"] for _, meta in found),
    }


def sweep_data(config):
    """The pool of training points and the test points of a sweep: scikit-learn's digits (the 1500 training images,
    flattened, and the other 297), or config["points"] and config["test_points"] draws of a 2-D toy data set."""
    if config["dataset"] == "digits":
        return (data.as_tensors(data.digits(train=train))[0].flatten(1) for train in (True, False))
    generator = torch.Generator().manual_seed(config["seed"])
    return (data.toy_data(config["dataset"], config[key], generator) for key in ("points", "test_points"))


def build_generalization(experiment, folder, device, time_budget, needed):
    """Run :func:`sweep_sizes` on the data of :func:`sweep_data` on the CPU, resumably in folder/run, and store its
    results (with the points, when they were drawn). Returns the meta, or None when the time budget ran out first."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"{experiment.name} trains small MLPs on the CPU; build it with --device cpu, not {device}")
    config = experiment.config
    run = folder / "run"
    store.forget_other_runs(run, config)
    points, test = sweep_data(config)
    schedule = NoiseSchedule.named(config["schedule"], T=config["T"])
    found = sweep_sizes(points, test, schedule, config, run, time_budget, lambda line: print(line, flush=True))
    if found is None:
        print(f"{experiment.name}: not finished; run the build again", flush=True)
        return None
    seconds = found.pop("seconds")
    drawn = {} if config["dataset"] == "digits" else {"points": points, "test": test}  # the digits are a fixed set
    store.save_tensors(folder, "sweep.safetensors", {**found, **drawn})
    return {"seconds": seconds, "models": 2 * len(config["sizes"])}
