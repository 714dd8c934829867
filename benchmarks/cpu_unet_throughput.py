"""Image-steps per second of the stored MNIST U-Net on this CPU, for each way PyTorch offers to run it, and for the
inference plan that diffusion_lib.inference chooses here.

Every variant is timed in the same run as the reference (float32, eager,
under torch.no_grad) at the same batch size, and reported as a ratio to it,
beside the largest difference of its output from the reference's on the
same input, in units of bfloat16's relative rounding (2^-8) of the
output's largest value. The first lines name the CPU's capability (AVX2,
AVX512) and whether its oneDNN computes in bfloat16 natively, which decides
the plan.

    python benchmarks/cpu_unet_throughput.py [--threads 2] [--batches 16,64,256] [--seconds 20] [--only plan]
"""

import argparse
import contextlib
import copy
import time

import torch

from diffusion_lib import artifacts
from diffusion_lib.inference import cpu_has_native_bf16, inference_network, inference_plan

BF16_ROUNDING = 2.0**-8


def variants(network):
    """name -> (module, input layout, autocast dtype or None, grad mode) for every way of running the network."""
    channels_last = copy.deepcopy(network).to(memory_format=torch.channels_last)
    compiled = torch.compile(copy.deepcopy(network))
    compiled_channels_last = torch.compile(copy.deepcopy(network).to(memory_format=torch.channels_last))
    return {
        "float32 eager, no_grad (reference)": (network, torch.contiguous_format, None, torch.no_grad),
        "float32 eager, inference_mode": (network, torch.contiguous_format, None, torch.inference_mode),
        "float32 channels-last": (channels_last, torch.channels_last, None, torch.inference_mode),
        "bfloat16 autocast": (network, torch.contiguous_format, torch.bfloat16, torch.inference_mode),
        "bfloat16 autocast, channels-last": (channels_last, torch.channels_last, torch.bfloat16, torch.inference_mode),
        "float32 compiled": (compiled, torch.contiguous_format, None, torch.inference_mode),
        "float32 compiled, channels-last": (compiled_channels_last, torch.channels_last, None, torch.inference_mode),
        "bfloat16 autocast, compiled": (compiled, torch.contiguous_format, torch.bfloat16, torch.inference_mode),
        "bfloat16 autocast, compiled, channels-last": (
            compiled_channels_last,
            torch.channels_last,
            torch.bfloat16,
            torch.inference_mode,
        ),  # fmt: skip
        f"plan: {inference_plan('cpu').describe()}": (
            inference_network(network, "cpu"),
            torch.contiguous_format,
            None,
            torch.inference_mode,
        ),
        f"plan, compile=True: {inference_plan('cpu', compile=True).describe()}": (
            inference_network(network, "cpu", compile=True),
            torch.contiguous_format,
            None,
            torch.inference_mode,
        ),
    }


def run(module, x, t, dtype, grad_mode):
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with grad_mode(), autocast:
        return module(x, t).float()


def rate(module, x, t, dtype, grad_mode, seconds):
    """Image-steps per second over at least `seconds` of repeated calls, after two warm-up calls."""
    run(module, x, t, dtype, grad_mode)
    run(module, x, t, dtype, grad_mode)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(module, x, t, dtype, grad_mode)
        calls += 1
    return calls * len(x) / (time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="16,64,256")
    parser.add_argument("--seconds", type=float, default=20.0, help="timing per variant and batch size")
    parser.add_argument("--only", default="", help="time only the variants whose name holds this (and the reference)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    network = artifacts.load("mnist-ddpm").model
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bfloat16: {cpu_has_native_bf16()}")  # fmt: skip
    for batch in [int(b) for b in args.batches.split(",")]:
        generator = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 1, 28, 28, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        reference_output, reference_rate = None, None
        for name, (module, layout, dtype, grad_mode) in variants(network).items():
            if reference_output is not None and args.only not in name:
                continue
            x_in = x.contiguous(memory_format=layout)
            output = run(module, x_in, t, dtype, grad_mode)
            speed = rate(module, x_in, t, dtype, grad_mode, args.seconds)
            if reference_output is None:
                reference_output, reference_rate = output, speed
            gap = (output - reference_output).abs().max().item() / (reference_output.abs().max().item() * BF16_ROUNDING)
            print(f"batch {batch:3d}  {name:60s} {speed:8.1f} image-steps/s  {speed / reference_rate:5.2f}x  "
                  f"max difference {gap:5.2f} bf16 roundings", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
