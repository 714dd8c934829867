"""Do the stored U-Net's samples change when it runs by this CPU's inference plan instead of in float32?

Draws the same images twice from the same noises (DDIM, eta 0), once with the
network in float32 and once as diffusion_lib.inference prepares it for this CPU
(bfloat16 autocast where oneDNN computes it natively), and measures both sets
as the book does, with the judge: the confident fraction and the class
fractions (binomial standard errors), KID against the test set (its jackknife
standard error) and FID (no standard error; read its change beside the FID of
the float32 set). It prints each measure's change in standard errors, the
largest of them, the wall time of each pass and the mean pixel distance
between paired images.

    python benchmarks/inference_fidelity.py [--n 400] [--steps 50] [--threads 2]
"""

import argparse
import math
import time

import torch

from diffusion_lib import artifacts, data, metrics, sample
from diffusion_lib.inference import inference_network, inference_plan


def draw(model, ddpm, x_T, steps, batch_size=100):
    """Images in [-1, 1] quantised to 8 bits, as the stored samples are, drawn batch by batch from x_T."""
    images = []
    with torch.inference_mode():
        for batch in x_T.split(batch_size):
            x = sample(model, ddpm.schedule, batch.shape, sampler="ddim", num_steps=steps, x_T=batch)
            images.append(data.from_bytes(data.to_bytes(x)))
    return torch.cat(images)


def measures(images, judge, test_features):
    features, probabilities = metrics.classify(judge, images)
    kid, kid_error = metrics.kid(features, test_features)
    return {
        "confident": metrics.confident_fraction(probabilities, 0.9),
        "classes": metrics.class_fractions(probabilities),
        "kid": (kid, kid_error),
        "fid": metrics.fid(features, test_features),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ddpm, judge = artifacts.load("mnist-ddpm"), artifacts.load("mnist-classifier").model
    test_features = artifacts.load("mnist-judge-features").tensors("features.safetensors")["test/features"].float()
    x_T = torch.randn((args.n, *ddpm.image_shape), generator=torch.Generator().manual_seed(0))
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}; plan: {inference_plan('cpu').describe()}; "
          f"{args.n} images, DDIM {args.steps} steps")  # fmt: skip
    found, images = {}, {}
    for name, model in (("float32", ddpm.model), ("plan", inference_network(ddpm.model, "cpu"))):
        started = time.perf_counter()
        images[name] = draw(model, ddpm, x_T, args.steps)
        print(f"{name}: {time.perf_counter() - started:.0f} s")
        found[name] = measures(images[name], judge, test_features)
    reference, plan = found["float32"], found["plan"]
    p = reference["confident"]
    gaps = {
        "confident fraction": abs(plan["confident"] - p) / math.sqrt(2 * p * (1 - p) / args.n),
        "largest class fraction": max(
            abs(a - b) / math.sqrt(2 * b * (1 - b) / args.n)
            for a, b in zip(plan["classes"].tolist(), reference["classes"].tolist(), strict=True)
        ),
        "KID": abs(plan["kid"][0] - reference["kid"][0]) / math.hypot(plan["kid"][1], reference["kid"][1]),
    }
    print(f"confident fraction: {p:.4f} float32, {plan['confident']:.4f} plan")
    print(f"KID: {reference['kid'][0]:.2f} +- {reference['kid'][1]:.2f} float32, {plan['kid'][0]:.2f} +- "
          f"{plan['kid'][1]:.2f} plan")  # fmt: skip
    print(f"FID: {reference['fid']:.3f} float32, {plan['fid']:.3f} plan")
    distance = (images["plan"] - images["float32"]).flatten(1).pow(2).mean(1).sqrt().mean().item()
    print(f"mean RMS pixel distance between paired images: {distance:.4f} (pixels span 2)")
    for name, gap in gaps.items():
        print(f"{name}: changed by {gap:.2f} standard errors")
    print(f"largest change: {max(gaps.values()):.2f} standard errors")


if __name__ == "__main__":
    main()
