"""The named experiments whose results are stored as artifacts, each a record of what defines it.

A record carries its config, the callables that build it and make its
network, the library sources that define its computation (whole files, or
single top-level definitions as "file.py:name") and the artifacts it needs.
A builder receives the artifacts it needs already loaded, so no experiment
imports :mod:`diffusion_lib.artifacts`.
"""

from .record import Experiment, later
from .sources import (
    CLASSIFIER_TRAINING_SOURCES,
    DIFFUSION_SOURCES,
    EVALUATION_SOURCES,
    MLP_TRAINING_SOURCES,
    SAMPLING_SOURCES,
)


def generalization_sweep(name, description, data, training, data_sources=()):
    """An experiment of experiments/generalization.py: the sweep's data and training settings (a depth-3 MLP, the
    linear schedule, seed 0, unless given), its builder, and its sources with those of the data (the builder reads
    the digits or draws 2-D points; ``data_sources`` adds the 2-D data's own functions)."""
    config = {"depth": 3, "schedule": "linear", "T": 1000, "seed": 0, **data, **training}
    sources = ("experiments/generalization.py", *MLP_TRAINING_SOURCES, *SAMPLING_SOURCES, "checkpoints.py",
               "store.py:forget_other_runs", "resumable.py", "data.py:digits", "data.py:as_tensors", "data.py:toy_data",
               *data_sources)  # fmt: skip
    return Experiment(name, description, config, later("generalization", "build_generalization"), None, sources)


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

# mnist-cfg: the mnist-ddpm recipe with labels on a GPU; on a CPU a U-Net of a quarter of the width and one block per
# level, trained for 3,000 steps of 64 images (about an hour on two cores).
CONDITIONAL = {"conditional": True, "class_dropout": 0.1}
MNIST_CFG_TRAINING = {
    "cuda": {**MNIST_DDPM_TRAINING, **CONDITIONAL},
    "cpu": {
        **MNIST_DDPM_TRAINING,
        **CONDITIONAL,
        **{"batch_size": 64, "steps": 3000, "warmup": 200, "ema_decay": 0.998, "channels": 32, "blocks_per_level": 1},
        **{"dropout": 0.0, "log_every": 50},
    },
}

EXPERIMENTS = {
    e.name: e
    for e in [
        Experiment(
            "mnist-classifier",
            "A small CNN trained on the MNIST training set; the judge of generated digits and the feature map of FID.",
            {"dataset": "mnist", "epochs": 8, "batch_size": 128, "lr": 1e-3, "seed": 0},
            later("judge", "build_classifier"),
            later("judge", "make_classifier"),
            (
                "models/classifier.py",
                "experiments/judge.py:build_classifier",
                "experiments/judge.py:judge_accuracies",
                "experiments/judge.py:make_classifier",
                "experiments/judge.py:accuracy",
                *CLASSIFIER_TRAINING_SOURCES,
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
            later("ddpm", "build_ddpm"),
            later("ddpm", "make_unet"),
            (*DIFFUSION_SOURCES, "inference.py", "resumable.py", *EVALUATION_SOURCES),
            open=later("ddpm", "open_diffusion"),
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
            later("samplers", "build_sampler_table"),
            None,
            (
                "experiments/samplers.py",
                "resumable.py",
                *SAMPLING_SOURCES,
                "inference.py",
                "checkpoints.py",
                "store.py:forget_other_runs",
                "metrics.py:kid",
                "metrics.py:polynomial_kernel",
                "metrics.py:_kernel_row_sums",
                *EVALUATION_SOURCES,
            ),
            needs=("mnist-ddpm", "mnist-classifier"),
        ),
        Experiment(
            "mnist-cfg",
            "A conditional DDPM U-Net on MNIST trained with class dropout 0.1 (label 10 = no label), EMA weights.",
            {"train": MNIST_CFG_TRAINING, "grid": {"per_class": 10, "steps": 50, "seed": 3}},
            later("conditional", "build_conditional"),
            later("conditional", "make_conditional_unet"),
            (
                *(source for source in DIFFUSION_SOURCES if source != "experiments/ddpm.py"),
                "experiments/conditional.py",
                "inference.py",
                "data.py:to_bytes",
                "metrics.py:classify",
            ),
            open=later("conditional", "open_conditional"),
            needs=("mnist-classifier",),
        ),
        Experiment(
            "mnist-noisy-classifier",
            "A noise-conditional CNN p(y | x_t, t) trained on MNIST noised by the linear schedule (T = 1000).",
            {
                "dataset": "mnist",
                "epochs": 5,
                "batch_size": 128,
                "lr": 1e-3,
                "seed": 0,
                "width": 16,
                "schedule": "linear",
                "T": 1000,
                "report_steps": [0, 100, 200, 300, 400, 500, 600, 700, 800, 999],
            },
            later("noisy_judge", "build_noisy_classifier"),
            later("noisy_judge", "make_noisy_classifier"),
            (
                "models/noisy_classifier.py",
                "models/embeddings.py",
                "fit.py:Noised",
                "schedules.py",
                "experiments/noisy_judge.py",
                *CLASSIFIER_TRAINING_SOURCES,
            ),
        ),
        Experiment(
            "mnist-guidance",
            "Guidance swept over scales on mnist-cfg: classifier-free, classifier (mnist-noisy-classifier) and "
            "classifier-free in an interval of noise levels; every digit from the same noises, DDIM 50 steps.",
            {
                "free": {"scales": [0, 0.5, 1, 2, 3, 5, 8]},
                "classifier": {"scales": [0.5, 1, 2, 4, 8]},
                # the interval Kynkaanniemi et al. (2024) show for SD-XL; not tuned for MNIST
                "interval": {"scales": [2, 3, 5, 8], "sigma": [0.28, 5.42]},
                "per_class": {"cuda": 200, "cpu": 30},
                "chunk_per_class": 10,
                "sampling_steps": 50,
                "seed": 4,
            },
            later("guidance_sweep", "build_guidance_sweep"),
            None,
            (
                "experiments/guidance_sweep.py",
                "resumable.py",
                "guidance.py",
                "inference.py",
                *SAMPLING_SOURCES,
                "checkpoints.py",
                "store.py:forget_other_runs",
                "inference.py",
                "metrics.py:classify",
                "data.py:to_bytes",
                "data.py:from_bytes",
            ),
            needs=("mnist-cfg", "mnist-noisy-classifier", "mnist-classifier"),
        ),
        generalization_sweep(
            "digits-generalization",
            "Pairs of MLP denoisers trained on disjoint halves of scikit-learn's 8 x 8 digits, N images each, for N "
            "from 6 to 750 with the same step budget; samples of every model from the same x_T, DDIM 100 steps.",
            {"dataset": "digits", "sizes": [6, 12, 23, 47, 94, 188, 375, 750], "width": 256, "steps": 4000},
            {"batch_size": 128, "lr": 1e-3, "samples": 500, "sampling_steps": 100, "loss_draws": 16384},
        ),
        generalization_sweep(
            "roll-generalization",
            "Pairs of MLP denoisers trained on disjoint halves of 8192 swiss-roll points, N points each, for N from 4 "
            "to 4096 with the same step budget; samples of every model from the same x_T, DDIM 50 steps.",
            {"dataset": "swiss_roll", "points": 8192, "test_points": 2000, "sizes": [4, 16, 64, 256, 1024, 4096]},
            {
                "width": 64,
                "steps": 2000,
                "batch_size": 256,
                "lr": 3e-3,
                "samples": 1000,
                "sampling_steps": 50,
                "loss_draws": 8192,
            },  # fmt: skip
            ("data.py:swiss_roll",),
        ),
        Experiment(
            "mnist-judge-features",
            "The judge's features (float16) and class probabilities of the MNIST test set, the first 10,000 training "
            "images and mnist-ddpm's stored samples.",
            {"train_images": 10_000, "features": "float16"},
            later("judge_features", "build_judge_features"),
            None,
            ("experiments/judge_features.py", *EVALUATION_SOURCES),
            needs=("mnist-classifier", "mnist-ddpm"),
        ),
        Experiment(
            "mnist-guidance-measures",
            "Chapter 9's measures: the noise-conditional classifier's and the judge's accuracy on noised test digits, "
            "and the judge's per-digit measures of every mnist-guidance setting beside floors of real test digits.",
            {
                "accuracy": {"steps": [0, 100, 200, 300, 400, 500, 600, 700, 800, 999], "seed": 1},
                "floor": {"max_sets": 5, "seed": 3},
            },
            later("guidance_measures", "build_guidance_measures"),
            None,
            (
                "experiments/guidance_measures.py",
                "evaluation.py",
                "schedules.py",
                "metrics.py",
                *EVALUATION_SOURCES,
            ),
            needs=("mnist-guidance", "mnist-classifier", "mnist-noisy-classifier"),
        ),
        Experiment(
            "mnist-patch-machine",
            "The equivariant local score machine on 100 MNIST training images, its patch size calibrated against "
            "mnist-ddpm at every other step of a 20-step DDIM grid; its samples beside the network's and the optimal "
            "denoiser's from the same x_T.",
            {
                "patch_images": 100,
                "candidates": [3, 5, 7, 9, 13, 19],
                "background": -1.0,
                "calibration_images": 4,
                "sampling_steps": 20,
                "calibrate_every": 2,
                "samples": 4,
                "seed": 5,
            },
            later("patch_machine", "build_patch_machine"),
            None,
            (
                "experiments/patch_machine.py",
                "resumable.py:seeded_generator",
                "optimal.py",
                "metrics.py:r_squared",
                *SAMPLING_SOURCES,
                "data.py:mnist",
                "data.py:mnist_images",
                "data.py:_to_signed",
            ),
            needs=("mnist-ddpm",),
        ),
        Experiment(
            "roll-ddpm",
            "The DDPMs of chapter 3 on 10,000 swiss-roll points: an MLP per noise schedule (linear and cosine, T = "
            "1000), 4000 Adam steps each.",
            {
                "dataset": "swiss_roll",
                "points": 10_000,
                "schedules": ["linear", "cosine"],
                "T": 1000,
                "width": 64,
                "depth": 3,
                "time_dim": 64,
                "steps": 4000,
                "batch_size": 512,
                "lr": 3e-3,
                "seed": 0,
            },
            later("toy_ddpm", "build_toy_ddpm"),
            later("toy_ddpm", "make_networks"),
            (
                "experiments/toy_ddpm.py",
                *MLP_TRAINING_SOURCES,
                "schedules.py",
                "data.py:toy_data",
                "data.py:swiss_roll",
            ),
        ),
    ]
}
