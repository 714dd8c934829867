"""What sampling from the stored MNIST U-Net costs on this machine's CPU, for sizing the chapters' live cells.

Times one reverse step (a U-Net forward pass and the DDPM update) at several
batch sizes, then projects the cost of the samplers the book runs or
mentions, and sets the 10,000-image evaluation against the GPU time recorded
in the artifact.

    python benchmarks/cpu_sampling_cost.py
"""

import time

import torch

from diffusion_lib import artifacts
from diffusion_lib.sampling import sample


def seconds_per_step(model, schedule, batch_size, steps=5):
    """Mean wall time of one reverse step at a batch size, over `steps` steps after one warm-up step."""
    generator = torch.Generator().manual_seed(0)
    sample(model, schedule, (batch_size, 1, 28, 28), generator=generator, num_steps=2)
    started = time.perf_counter()
    sample(model, schedule, (batch_size, 1, 28, 28), generator=generator, num_steps=steps)
    return (time.perf_counter() - started) / steps


def main():
    stored = artifacts.load("mnist-ddpm")
    print(f"CPU threads: {torch.get_num_threads()}; network: {stored.meta['parameters'] / 1e6:.2f}M parameters")
    per_image = {}
    for batch_size in (1, 16, 64):
        seconds = seconds_per_step(stored.model, stored.schedule, batch_size)
        per_image[batch_size] = seconds / batch_size
        milliseconds = seconds * 1e3
        print(f"batch {batch_size:3d}: {milliseconds:8.1f} ms per step, {milliseconds / batch_size:6.1f} ms per image")
    print(f"batching: one image-step at batch 64 costs {per_image[64] / per_image[1]:.2f} of one at batch 1")
    cost = per_image[16]
    for images, steps in ((16, 50), (16, 1000), (10_000, 1000)):
        print(f"{images:6d} images x {steps:4d} steps: about {images * steps * cost:9.0f} s on this CPU")
    gpu = stored.metrics["sampling_seconds"]
    cpu = 10_000 * 1000 * per_image[64]
    print(
        f"the 10,000-sample evaluation: {gpu:.0f} s on {stored.meta['device_name']}; this CPU / GPU = {cpu / gpu:.0f}"
    )


if __name__ == "__main__":
    main()
