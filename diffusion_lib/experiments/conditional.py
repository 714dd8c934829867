"""mnist-cfg: the DDPM recipe trained with class labels and class dropout, for classifier-free guidance.

The experiment's config holds two training recipes: "cuda" (that of mnist-ddpm, with labels) and "cpu" (a smaller
U-Net trained for fewer steps, the size a CPU finishes in about an hour). A build uses the recipe of its device, and
the stored meta records which, so that the same command rebuilds the full-size model wherever a GPU is available.
"""

import dataclasses
import json
import time

import torch

from .. import checkpoints, data, metrics, store
from ..engine import TrainConfig, build_unet, train
from ..pipeline import Pipeline


def recipe(experiment, device):
    """The TrainConfig a build on this device trains: the "cuda" recipe on a GPU, the "cpu" recipe elsewhere."""
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return TrainConfig(**experiment.config["train"][kind])


def make_conditional_unet(experiment, meta):
    """The stored U-Net: the recipe of the device it was built on, with one class embedding per label and the null."""
    return build_unet(recipe(experiment, meta["device"]), tuple(meta["image_shape"]), meta["num_classes"])


def open_conditional(experiment, network, meta):
    """What a loaded conditional artifact offers: its pipeline, and the network as the callable (x, t, y) -> eps."""
    config = recipe(experiment, meta["device"])
    pipeline = Pipeline.from_config(network, config, meta["image_shape"], meta["num_classes"])
    return {"model": pipeline.model, "pipeline": pipeline}


def build_conditional(experiment, folder, device, time_budget, needed):
    """Train (resumably) in folder/run; store the EMA weights, the training curve and a grid of each digit drawn by
    the plain conditional model (guidance scale 1), with the judge's agreement on it. Returns the meta, or None when
    the time budget ran out first."""
    run = folder / "run"
    trained = recipe(experiment, device)
    per_device = {"train": dataclasses.asdict(trained), "grid": experiment.config["grid"]}
    store.forget_other_runs(run, per_device)
    config = dataclasses.replace(trained, out=str(run), device=str(device), time_budget=time_budget)
    summary = train(config)
    if not summary["complete"]:
        print(f"{experiment.name}: trained {summary['steps']}/{summary['total_steps']} steps; run the build again")
        return None
    meta = {"image_shape": list(summary["image_shape"]), "num_classes": summary["num_classes"], "device": device.type}
    network = make_conditional_unet(experiment, meta).to(device)
    network.load_state_dict(checkpoints.load(run / "ema.safetensors", device)[0])
    network.eval().requires_grad_(False)
    pipeline = open_conditional(experiment, network, meta)["pipeline"]

    started, grid = time.perf_counter(), experiment.config["grid"]
    labels = torch.arange(summary["num_classes"], device=device).repeat_interleave(grid["per_class"])
    images = pipeline.sample(len(labels), sampler="ddim", steps=grid["steps"], seed=grid["seed"], device=device,
                             labels=labels, bfloat16=False).to(device)  # fmt: skip
    judged = metrics.classify(needed["mnist-classifier"].model.to(device), images)[1].argmax(dim=1)
    found = {
        "grid_agreement": (judged == labels).double().mean().item(),
        "grid_sampler": f"ddim, eta 0, {grid['steps']} steps",
        "final_loss": summary["final_loss"],
    }
    store.save_weights(folder, {k: v.half() for k, v in network.state_dict().items()})
    store.save_json(folder, "metrics.json", found)
    store.save_json(folder, "history.json", json.loads((run / "history.json").read_text()))
    store.save_tensors(folder, "samples.safetensors", {"grid": data.to_bytes(images).cpu(), "labels": labels.cpu()})
    store.save_grid(folder, "samples.png", images, nrow=grid["per_class"])
    print(f"{experiment.name}: {json.dumps(found)}", flush=True)
    return {
        "image_shape": meta["image_shape"],
        "num_classes": meta["num_classes"],
        "seconds": summary["seconds"] + time.perf_counter() - started,
        "train_seconds": summary["seconds"],
        "steps": summary["steps"],
        "final_loss": summary["final_loss"],
        "parameters": sum(p.numel() for p in network.parameters()),
    }
