"""Diffusion models trained by the engine (chapter 6), their samples drawn in resumable chunks, and their evaluation."""

import json

import torch

from .. import checkpoints, data, store
from ..engine import TrainConfig, build_unet, train
from ..evaluation import evaluate_samples
from ..inference import inference_network
from ..pipeline import Pipeline
from ..resumable import TimeBudget, draw_in_chunks, seeded_generator
from ..sampling import sample


def train_config(experiment):
    """The TrainConfig of a diffusion experiment."""
    return TrainConfig(**experiment.config["train"])


def make_unet(experiment, meta):
    """The experiment's U-Net, for the image shape stored in meta."""
    return build_unet(train_config(experiment), tuple(meta["image_shape"]))


def open_diffusion(experiment, network, meta):
    """What a loaded diffusion artifact offers: its pipeline, and the network as the callable (x, t) -> eps."""
    pipeline = Pipeline.from_config(network, train_config(experiment), meta["image_shape"])
    return {"model": pipeline.model, "pipeline": pipeline}


def build_ddpm(experiment, folder, device, time_budget, needed):
    """Train (resumably) in folder/run, draw the evaluation samples in chunks, judge them; returns the meta.

    Returns None when the time budget ran out first; the next call continues.
    """
    budget = TimeBudget(time_budget)
    run = folder / "run"
    store.forget_other_runs(run, experiment.config)
    config = TrainConfig(
        **{**experiment.config["train"], "out": str(run), "device": str(device), "time_budget": time_budget}
    )
    summary = train(config)
    if not summary["complete"]:
        print(f"{experiment.name}: trained {summary['steps']}/{summary['total_steps']} steps; run the build again")
        return None
    meta = {"image_shape": list(summary["image_shape"])}
    network = make_unet(experiment, meta).to(device)
    network.load_state_dict(checkpoints.load(run / "ema.safetensors", device)[0])
    network.eval().requires_grad_(False)
    pipeline = open_diffusion(experiment, network, meta)["pipeline"]
    eps_model, schedule = pipeline.model, pipeline.schedule.to(device)

    evaluation = experiment.config["evaluation"]
    left = budget.left()
    shape = tuple(summary["image_shape"])
    fast = inference_network(eps_model, device)
    samples, sampling_seconds = sample_in_chunks(fast, schedule, shape, evaluation, run, left)
    if samples is None:
        print(f"{experiment.name}: sampling not finished; run the build again", flush=True)
        return None
    trajectory = filmstrip(eps_model, schedule, shape, evaluation["seed"], device)

    found = evaluate_samples(samples.to(device), needed["mnist-classifier"].model.to(device), device)
    found.update(sampling_steps=evaluation["sampling_steps"], sampling_seconds=sampling_seconds)
    store.save_weights(folder, {k: v.half() for k, v in network.state_dict().items()})
    store.save_json(folder, "metrics.json", found)
    store.save_tensors(folder, "samples.safetensors", {"samples": data.to_bytes(samples), "trajectory": trajectory})
    store.save_json(folder, "history.json", json.loads((run / "history.json").read_text()))
    store.save_grid(folder, "samples.png", samples[:100], nrow=10)
    print(f"{experiment.name}: {json.dumps({k: v for k, v in found.items() if k != 'class_fractions'})}", flush=True)
    return {
        **meta,
        "seconds": summary["seconds"] + sampling_seconds,
        "train_seconds": summary["seconds"],
        "steps": summary["steps"],
        "final_loss": summary["final_loss"],
        "parameters": sum(p.numel() for p in network.parameters()),
    }


@torch.no_grad()
def sample_in_chunks(eps_model, schedule, image_shape, evaluation, run, time_budget):
    """Draw evaluation["num_samples"] images chunk by chunk, each chunk saved, so that sampling can resume.

    Returns (samples in [-1, 1] quantised to 8 bits, seconds spent sampling), or (None, None) when the time
    budget ran out first.
    """
    device = schedule.betas.device

    def draw(row, chunk):
        return sample(eps_model, schedule, (evaluation["batch_size"], *image_shape), device=device,
                      generator=seeded_generator(evaluation["seed"], chunk, device),
                      num_steps=evaluation["sampling_steps"])  # fmt: skip

    chunks = evaluation["num_samples"] // evaluation["batch_size"]
    drawn = draw_in_chunks(run, ["samples"], chunks, draw, time_budget)
    if drawn is None:
        return None, None
    samples, seconds = drawn["samples"]
    return data.from_bytes(samples), seconds


@torch.no_grad()
def filmstrip(eps_model, schedule, image_shape, seed, device, num_images=10, frames=11):
    """x_t of a few samples at `frames` evenly spaced steps of the reverse process, float16 (frames, n, C, H, W)."""
    generator = torch.Generator(device).manual_seed(seed)
    states = sample(
        eps_model, schedule, (num_images, *image_shape), generator=generator, trajectory=True, device=device
    )
    keep = torch.linspace(0, len(states) - 1, frames).round().long()
    return states[keep].half().cpu()
