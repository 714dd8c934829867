"""CPU cost of the library's reverse-process loop against diffusers' DDPMScheduler loop.

Both run the same 2-D MLP denoiser for the same number of steps on the same
batch; the script prints the seconds per run of each and their ratio, so a
slower step function or loop shows up as a ratio above 1.

    python benchmarks/sampling_overhead.py [--batch 2000] [--steps 1000] [--repeats 3]
"""

import argparse
import time

import torch
from diffusers import DDPMScheduler

from diffusion_lib import NoiseSchedule, sample
from diffusion_lib.models import MLPDenoiser


def library_run(model, schedule, batch, seed):
    return sample(model, schedule, (batch, 2), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def diffusers_run(model, scheduler, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2, generator=generator)
    for t in scheduler.timesteps:
        eps = model(x, torch.full((batch,), int(t), dtype=torch.long))
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x


def best_time(run, repeats):
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        run(seed)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = MLPDenoiser().eval()
    schedule = NoiseSchedule.linear(T=args.steps)
    scheduler = DDPMScheduler(num_train_timesteps=args.steps, clip_sample=False)
    scheduler.set_timesteps(args.steps)

    ours = best_time(lambda seed: library_run(model, schedule, args.batch, seed), args.repeats)
    theirs = best_time(lambda seed: diffusers_run(model, scheduler, args.batch, seed), args.repeats)
    print(f"{args.steps} steps, batch {args.batch}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"diffusion_lib sample: {ours:.3f} s")
    print(f"diffusers DDPMScheduler loop: {theirs:.3f} s")
    print(f"ratio (library / diffusers): {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
