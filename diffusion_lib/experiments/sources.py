"""The library sources that several experiments share: evaluating MNIST samples, training the judge, sampling,
training a small MLP and training a U-Net with the engine. Entries are whole files or single top-level definitions
as "file.py:name" (:func:`diffusion_lib.store.source_hashes`); tests/test_experiment_sources.py checks that each
experiment names everything its builder uses.
"""

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
CLASSIFIER_TRAINING_SOURCES = (
    "fit.py:classifier_epoch",
    "fit.py:cosine_learning_rate",
    "fit.py:optimisation_step",
    "experiments/judge.py:train_and_store",
    "experiments/judge.py:fit_epochs",
    "experiments/judge.py:_save",
    "experiments/judge.py:_resume",
    "store.py:forget_other_runs",
    "resumable.py:TimeBudget",
    "checkpoints.py",
    "data.py:mnist",
    "data.py:mnist_images",
    "data.py:_to_signed",
)
SAMPLING_SOURCES = (
    "sampling.py",
    "solvers.py",
    "denoisers.py",
    "elbo.py:reverse_variances",
    "elbo.py:reverse_mean",
    "parameterization.py",
    "schedules.py",
)
MLP_TRAINING_SOURCES = (
    "models/mlp.py",
    "models/embeddings.py",
    "fit.py:fit",
    "fit.py:cosine_learning_rate",
    "fit.py:optimisation_step",
    "losses.py",
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
    "solvers.py",
    "denoisers.py",
    "pipeline.py",
    "engine.py",
    "distributed.py",
    "store.py:forget_other_runs",
    "fit.py:cosine_learning_rate",
    "fit.py:optimisation_step",
    "checkpoints.py",
    "experiments/ddpm.py",
)
