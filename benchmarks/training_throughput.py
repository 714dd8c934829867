"""Training throughput: our trainer and U-Net against diffusers' UNet2DModel + DDPMScheduler, in one run.

Both networks have (within 10%) the same number of parameters and see the
same batch size, data (MNIST, held on the device) and device. Ours runs
through ``diffusion_lib.train.train`` itself (bf16 autocast, channels-last,
torch.compile, fused AdamW, EMA); diffusers runs the loop of its
unconditional training example (bf16 autocast, AdamW, EMAModel), eagerly and
compiled. Prints images per second and the ratios.

    python benchmarks/training_throughput.py            # on CUDA: the mnist-ddpm config
    python benchmarks/training_throughput.py --tiny     # a small config the CPU runs in a minute
"""

import argparse
import dataclasses
import json
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from diffusion_lib import data
from diffusion_lib.artifacts import EXPERIMENTS
from diffusion_lib.engine import TrainConfig, build_unet, train


def diffusers_unet(config):
    """The UNet2DModel with our U-Net's channels, blocks per level and attention placement."""
    widths = tuple(config.channels * m for m in config.channel_mults)
    resolutions = [28 // 2**level for level in range(len(widths))]
    attention = [r in config.attention_resolutions for r in resolutions]
    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        layers_per_block=config.blocks_per_level,
        block_out_channels=widths,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        norm_num_groups=min(32, config.channels),
        dropout=config.dropout,
    )


def diffusers_images_per_second(config, images, steps, warmup, compiled):
    """The training loop of diffusers' train_unconditional example, timed after `warmup` steps."""
    device = images.device
    unet = diffusers_unet(config).to(device, memory_format=torch.channels_last)
    scheduler = DDPMScheduler(num_train_timesteps=config.T, beta_schedule=config.schedule)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay)
    network = torch.compile(unet) if compiled else unet
    bf16 = device.type == "cuda"
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        clean = images[torch.randint(0, len(images), (config.batch_size,), device=device)]
        noise = torch.randn_like(clean)
        t = torch.randint(0, config.T, (config.batch_size,), device=device)
        noisy = scheduler.add_noise(clean, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            prediction = network(noisy, t).sample
        loss = F.mse_loss(prediction.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        optimizer.step()
        ema.step(unet.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - started)


def ours_images_per_second(config, steps, warmup):
    """Images per second of diffusion_lib.train over the steps after `warmup`, from its own log."""
    with tempfile.TemporaryDirectory() as out:
        config = dataclasses.replace(config, out=out, steps=warmup + steps, log_every=warmup, checkpoint_every=10**9)
        config = dataclasses.replace(config, warmup=min(config.warmup, warmup))
        train(config)
        history = json.loads((Path(out) / "history.json").read_text())
    windows = [(before, after) for before, after in pairwise(history) if before["step"] >= warmup]
    images = [config.batch_size * (after["step"] - before["step"]) for before, after in windows]
    seconds = sum(n / after["images_per_second"] for n, (_, after) in zip(images, windows, strict=True))
    return sum(images) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a small network and few steps, for the CPU")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--compile_mode", default=None, help="torch.compile mode for ours, e.g. reduce-overhead")
    parser.add_argument("--diffusers", choices=("eager", "compiled", "both"), default="both")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig(**EXPERIMENTS["mnist-ddpm"].config["train"])
    steps, warmup = (300, 100) if device.type == "cuda" else (20, 5)
    if args.tiny:
        config = dataclasses.replace(config, channels=32, channel_mults=(1, 2), attention_resolutions=(14,))
        steps, warmup = 20, 5
    config = dataclasses.replace(config, device=str(device), batch_size=args.batch_size or config.batch_size)
    config = dataclasses.replace(config, compile_mode=args.compile_mode)
    steps = args.steps or steps

    ours_parameters = sum(p.numel() for p in build_unet(config, (1, 28, 28)).parameters())
    images = data.as_tensors(data.image_dataset("mnist"))[0].to(device)
    results = {"ours": ours_images_per_second(config, steps, warmup)}
    diffusers_parameters = sum(p.numel() for p in diffusers_unet(config).parameters())
    if args.diffusers in ("eager", "both"):
        results["diffusers"] = diffusers_images_per_second(config, images, steps, warmup, compiled=False)
    if device.type == "cuda" and args.diffusers in ("compiled", "both"):
        results["diffusers compiled"] = diffusers_images_per_second(config, images, steps, warmup, compiled=True)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, batch {config.batch_size}")
    print(f"ours: torch.compile mode {config.compile_mode or 'default'}")
    print(f"parameters: ours {ours_parameters / 1e6:.2f}M, diffusers {diffusers_parameters / 1e6:.2f}M")
    if abs(ours_parameters / diffusers_parameters - 1) > 0.10:
        raise SystemExit("parameter counts differ by more than 10%; the comparison would not be matched")
    for name, rate in results.items():
        print(f"{name:20s} {rate:10.0f} images/s   ours / this = {results['ours'] / rate:.2f}")


if __name__ == "__main__":
    main()
