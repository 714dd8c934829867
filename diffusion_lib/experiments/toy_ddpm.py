"""roll-ddpm: the two-dimensional DDPMs of chapter 3, one MLP per noise schedule, trained on the CPU.

Each network is trained with :func:`~diffusion_lib.fit.fit` on the same points
(drawn from a seeded generator, so that the chapter draws the same ones) and
stored with its loss at every step; the loaded artifact's model is a
``ModuleDict`` from schedule name to network.
"""

import time

import torch

from .. import data, store
from ..fit import fit
from ..models.mlp import MLPDenoiser
from ..schedules import NoiseSchedule


def training_points(config):
    """The training set: config["points"] draws of the toy data set from a generator seeded with config["seed"]."""
    return data.toy_data(config["dataset"], config["points"], torch.Generator().manual_seed(config["seed"]))


def make_networks(experiment, meta):
    """{schedule name: MLPDenoiser} as a ModuleDict, untrained."""
    config = experiment.config
    shape = {"dim": 2, "width": config["width"], "depth": config["depth"], "time_dim": config["time_dim"]}
    return torch.nn.ModuleDict({name: MLPDenoiser(**shape) for name in config["schedules"]})


def build_toy_ddpm(experiment, folder, device, time_budget, needed):
    """Train one network per schedule and store the weights and the loss curves. Returns the meta."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"{experiment.name} trains small MLPs on the CPU; build it with --device cpu, not {device}")
    config = experiment.config
    points = training_points(config)
    torch.manual_seed(config["seed"])  # the initial weights
    networks = make_networks(experiment, {})
    losses, seconds = {}, {}
    for name, network in networks.items():
        started = time.perf_counter()
        losses[name] = fit(network, NoiseSchedule.named(name, T=config["T"]), points, steps=config["steps"],
                           batch_size=config["batch_size"], lr=config["lr"],
                           generator=torch.Generator().manual_seed(config["seed"]))  # fmt: skip
        seconds[name] = time.perf_counter() - started
        print(
            f"{name}: {config['steps']} steps in {seconds[name]:.1f} s, final loss {losses[name][-1]:.4f}", flush=True
        )
    store.save_weights(folder, networks.state_dict())
    store.save_json(folder, "history.json", losses)
    return {"seconds": sum(seconds.values()), "train_seconds": seconds}
