"""mnist-patch-machine: the equivariant local score machine beside the stored MNIST network (chapter 10).

Patch denoisers (:class:`~diffusion_lib.optimal.PatchDenoiser`) of the patches of a
few hundred training images are calibrated against mnist-ddpm: at every other step of
a DDIM grid, noisy test images are denoised by each candidate patch size, by the
optimal denoiser of all training images and by that of the patch machines' images,
and each estimate of x_0 is compared with the network's by r^2. The machine that
samples uses, at each step, the patch size that agreed best where some size
explains at least half of the network's estimate, and the largest size at the
noisier steps. Its samples, the network's and the optimal denoiser's are drawn
from the same x_T.
"""

import time

import torch

from .. import data, store
from ..metrics import r_squared
from ..optimal import EmpiricalDenoiser, PatchDenoiser
from ..parameterization import x0_from_eps
from ..resumable import seeded_generator
from ..sampling import sample

# Below this r^2 no patch size explains even half of the network's estimate: the machine then uses its largest size.
AGREEMENT_NEEDED = 0.5


def calibration_noise(config, index, shape):
    """The noise of calibration step number `index`: its own seeded generator, so a step can be recomputed alone."""
    return torch.randn(shape, generator=seeded_generator(config["seed"], index))


@torch.no_grad()
def agreement_at(step, noise, clean, network, denoisers):
    """{name: mean r^2 of each denoiser's estimate of x_0 with the network's} on clean images noised to `step`."""
    schedule = next(iter(denoisers.values())).schedule
    t = torch.full((len(clean),), step)
    xt = schedule.q_sample(clean, t, noise)
    network_x0 = x0_from_eps(schedule, xt, t, network(xt, t))
    return {name: r_squared(denoiser.x0(xt, t), network_x0).mean().item() for name, denoiser in denoisers.items()}


def patch_sizes_to_use(agreement, candidates):
    """Per calibrated step (least noisy first): the best size where some size reaches AGREEMENT_NEEDED, the largest
    candidate at every noisier step; and the index of the last step that reaches it."""
    best = [candidates[j] for j in agreement.argmax(dim=1).tolist()]
    last_agreeing = (agreement.max(dim=1).values > AGREEMENT_NEEDED).nonzero().max().item()
    return best[: last_agreeing + 1] + [max(candidates)] * (len(best) - last_agreeing - 1), last_agreeing


def calibrated_machine(machines, calibrated_steps, sizes):
    """The denoiser (x_t, t) -> eps that uses, at step t, the machine of the calibrated step nearest to t."""

    def denoiser(xt, t):
        nearest = (calibrated_steps - int(t[0])).abs().argmin()
        return machines[sizes[nearest]](xt, t)

    return denoiser


def ddim(model, schedule, x_T, num_steps):
    with torch.no_grad():
        return sample(model, schedule, x_T.shape, sampler="ddim", num_steps=num_steps, x_T=x_T)


def build_patch_machine(experiment, folder, device, time_budget, needed):
    """Calibrate, sample and store; on the CPU (patch denoisers are exact sums over stored patches). Returns the
    meta."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"{experiment.name} runs exact patch denoisers on the CPU; build it with --device cpu")
    config, started = experiment.config, time.perf_counter()
    ddpm = needed["mnist-ddpm"]
    schedule, network = ddpm.schedule, ddpm.model
    train_images = data.mnist_images(train=True)[0]
    clean = data.mnist_images(train=False)[0][: config["calibration_images"]]
    patch_training = train_images[: config["patch_images"]]
    candidates = config["candidates"]
    machines = {size: PatchDenoiser(patch_training, schedule, size, border=config["background"]) for size in candidates}
    baselines = {
        "optimal, all images": EmpiricalDenoiser(train_images, schedule),
        f"optimal, {len(patch_training)} images": EmpiricalDenoiser(patch_training, schedule),
    }
    calibrated_steps = schedule.spaced_timesteps(config["sampling_steps"])[:: config["calibrate_every"]]
    rows, noises = [], torch.stack([calibration_noise(config, i, clean.shape) for i in range(len(calibrated_steps))])
    for step, noise in zip(calibrated_steps.tolist(), noises, strict=True):
        rows.append(agreement_at(step, noise, clean, network, {**machines, **baselines}))
        print(f"step {step + 1}: " + ", ".join(f"{name} {value:.2f}" for name, value in rows[-1].items()), flush=True)
    agreement = torch.tensor([[row[size] for size in candidates] for row in rows])
    sizes, last_agreeing = patch_sizes_to_use(agreement, candidates)
    x_T = torch.randn((config["samples"], *ddpm.image_shape), generator=torch.Generator().manual_seed(config["seed"]))
    steps = config["sampling_steps"]
    samples = {
        "machine": ddim(calibrated_machine(machines, calibrated_steps, sizes), schedule, x_T, steps),
        "network": ddim(network, schedule, x_T, steps),
        "optimal": ddim(baselines["optimal, all images"], schedule, x_T, steps),
    }
    store.save_tensors(
        folder,
        "results.safetensors",
        {
            "calibrated_steps": calibrated_steps,
            "calibration_noise": noises,
            "agreement": agreement,
            "x_T": x_T,
            **samples,
        },
    )
    found = {
        "baselines": {name: [row[name] for row in rows] for name in baselines},
        "sizes_used": sizes,
        "last_agreeing": last_agreeing,
    }
    store.save_json(folder, "metrics.json", found)
    return {"seconds": time.perf_counter() - started}
