"""The named experiments whose results are stored as artifacts, each a record of what defines it.

A record carries its config, the callables that build it and make its
network, the library sources that define its computation (whole files, or
single top-level definitions as "file.py:name") and the artifacts it needs.
A builder receives the artifacts it needs already loaded, so no experiment
imports :mod:`diffusion_lib.artifacts`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from .ddpm import build_ddpm, make_unet, open_diffusion
from .judge import build_classifier, make_classifier
from .samplers import build_sampler_table

EVALUATION_SOURCES = (
    "evaluation.py",
    "data.py:mnist",
    "data.py:mnist_images",
    "data.py:_to_signed",
    "data.py:to_bytes",
    "data.py:from_bytes",
    "metrics.py:nearest_neighbours",
    "metrics.py:nearest_distances",
    "metrics.py:gaussian_statistics",
    "metrics.py:frechet_distance",
    "metrics.py:_symmetric_sqrt",
    "metrics.py:fid",
    "metrics.py:classify",
    "metrics.py:confident_fraction",
    "metrics.py:class_fractions",
)
DIFFUSION_SOURCES = (
    "models/unet.py",
    "models/embeddings.py",
    "schedules.py",
    "parameterization.py",
    "losses.py:denoising_loss",
    "elbo.py:reverse_variances",
    "elbo.py:reverse_mean",
    "sampling.py",
    "engine.py",
    "fit.py:cosine_learning_rate",
    "fit.py:optimisation_step",
    "checkpoints.py",
    "experiments/ddpm.py",
)


def opened_as_is(experiment, network, meta):
    """A loaded artifact whose network is used as it is (a classifier: images -> logits)."""
    return {"model": network}


@dataclass(frozen=True)
class Experiment:
    """A named, stored result: its config, how it is built and loaded, and what defines it.

    build(experiment, folder, device, time_budget, needed) writes the artifact's files and returns its meta
    (None when the time budget ran out first); make_model(experiment, meta) returns the stored network (None for
    an experiment that stores results but no network);
    open(experiment, network, meta) returns what the loaded artifact offers (its model, and for diffusion
    models the schedule and image shape).
    """

    name: str
    description: str
    config: dict
    build: Callable
    make_model: Callable | None
    sources: tuple
    open: Callable = opened_as_is
    needs: tuple = field(default=())


# Every field of TrainConfig that changes what the run computes, written out, so that a later change of a default
# cannot change this experiment unnoticed (engine.defining_fields lists them).
MNIST_DDPM_TRAINING = {
    "dataset": "mnist",
    "image_size": None,
    "batch_size": 512,
    "steps": 8000,
    "epochs": None,
    "lr": 1e-3,
    "warmup": 500,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "schedule": "linear",
    "T": 1000,
    "prediction": "eps",
    "channels": 64,
    "channel_mults": [1, 2, 2],
    "blocks_per_level": 2,
    "attention_resolutions": [7],
    "dropout": 0.1,
    "seed": 0,
    "bf16": None,
    "log_every": 100,
}

EXPERIMENTS = {
    e.name: e
    for e in [
        Experiment(
            "mnist-classifier",
            "A small CNN trained on the MNIST training set; the judge of generated digits and the feature map of FID.",
            {"dataset": "mnist", "epochs": 8, "batch_size": 128, "lr": 1e-3, "seed": 0},
            build_classifier,
            make_classifier,
            (
                "models/classifier.py",
                "fit.py:classifier_epoch",
                "fit.py:cosine_learning_rate",
                "fit.py:optimisation_step",
                "experiments/judge.py",
                "experiments/ddpm.py:forget_other_runs",
                "checkpoints.py",
                "data.py:mnist",
                "data.py:mnist_images",
                "data.py:_to_signed",
                "metrics.py:classify",
            ),
        ),
        Experiment(
            "mnist-ddpm",
            "An unconditional DDPM U-Net on MNIST (epsilon prediction, linear schedule, T = 1000), EMA weights.",
            {
                "train": MNIST_DDPM_TRAINING,
                "evaluation": {"num_samples": 10_000, "sampling_steps": 1000, "batch_size": 5000, "seed": 1},
            },
            build_ddpm,
            make_unet,
            DIFFUSION_SOURCES + EVALUATION_SOURCES,
            open=open_diffusion,
            needs=("mnist-classifier",),
        ),
        Experiment(
            "mnist-samplers",
            "Samplers against steps on mnist-ddpm: DDPM respaced, DDIM eta 0 and 1, DPM-Solver++(2M), 10 to 100 steps.",
            {
                "samplers": {
                    "ddpm": {"sampler": "ddpm"},
                    "ddim-eta0": {"sampler": "ddim", "eta": 0.0},
                    "ddim-eta1": {"sampler": "ddim", "eta": 1.0},
                    "dpm-solver++": {"sampler": "dpm-solver++"},
                },
                "steps": [10, 20, 50, 100],
                "num_samples": {"cuda": 10_000, "cpu": 125},
                "batch_size": 125,
                "reference_sets": 10,
                "grid_images": 8,
                "seed": 2,
            },
            build_sampler_table,
            None,
            (
                "experiments/samplers.py",
                "sampling.py",
                "solvers.py",
                "elbo.py:reverse_variances",
                "elbo.py:reverse_mean",
                "parameterization.py",
                "schedules.py",
                "engine.py:inference_network",
                "metrics.py:kid",
                "metrics.py:polynomial_kernel",
                "metrics.py:_kernel_row_sums",
                *EVALUATION_SOURCES,
            ),
            needs=("mnist-ddpm", "mnist-classifier"),
        ),
    ]
}
