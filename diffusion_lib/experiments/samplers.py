"""mnist-samplers: samplers against steps on the stored MNIST DDPM (chapter 8), every row from the same noises.

For each sampler and number of steps, the builder draws the same number of
images from the same x_T, chunk by chunk (each chunk saved, so a build
resumes), and measures each row as chapter 5 does, beside the same measures
of real images at the same number of images: training images against the
test set (the floor) and the stored thousand-step DDPM samples.
"""

import time

import torch

from .. import data, metrics, store
from ..inference import inference_network
from ..resumable import TimeBudget, draw_in_chunks, seeded_generator
from ..sampling import sample


def row_names(config):
    """The rows of the table, "<sampler name>-<steps>", in the order of the config."""
    return [f"{name}-{steps}" for name in config["samplers"] for steps in config["steps"]]


def num_samples(config, device):
    """The number of images per row for the device: the full size on a GPU, a smaller one on a CPU."""
    return config["num_samples"]["cuda" if torch.device(device).type == "cuda" else "cpu"]


def noises(config, chunk, device):
    """The x_T of a chunk, the same for every row, and a generator for the samplers that draw noise."""
    generator = seeded_generator(config["seed"], chunk, device)
    x_T = torch.randn((config["batch_size"], 1, 28, 28), generator=generator, device=device)
    return x_T, generator


def warm_up(model, config, device):
    """One call of the network on the batch shape before any timing, so that no row pays for compiling it."""
    x = torch.zeros((config["batch_size"], 1, 28, 28), device=device)
    with torch.inference_mode():
        model(x, torch.zeros(config["batch_size"], dtype=torch.long, device=device))


def draw_rows(model, schedule, config, run, device, n, time_budget):
    """Draw every row chunk by chunk into run/; returns {row: (uint8 images, seconds)} or None when out of time."""
    budget = TimeBudget(time_budget)
    warm_up(model, config, device)
    settings = {f"{name}-{steps}": (options, steps) for name, options in config["samplers"].items()
                for steps in config["steps"]}  # fmt: skip

    def draw(row, chunk):
        options, steps = settings[row]
        x_T, generator = noises(config, chunk, device)
        with torch.inference_mode():
            return sample(model, schedule, x_T.shape, x_T=x_T, generator=generator, num_steps=steps, **options)

    return draw_in_chunks(run, row_names(config), n // config["batch_size"], draw, budget.left())


def measure(features, probabilities, test_features, test_classes):
    """The measures of one set of n images: FID and KID to the test set, confident fraction, class balance."""
    kid, kid_error = metrics.kid(features, test_features)
    classes = metrics.class_fractions(probabilities)
    return {
        "fid": metrics.fid(features, test_features),
        "kid": kid,
        "kid_standard_error": kid_error,
        "confident_fraction": metrics.confident_fraction(probabilities, 0.9),
        "class_fractions": classes.tolist(),
        "largest_class_gap": (classes - test_classes).abs().max().item(),
    }


def flow_distances(rows, config):
    """{row: mean over images of the RMS pixel distance (pixels in [-1, 1]) to the image that the last sampler of the
    config, at its most steps, drew from the same noise}: how far each row is from the probability-flow map."""
    reference = data.from_bytes(rows[f"{list(config['samplers'])[-1]}-{config['steps'][-1]}"][0]).double()
    return {
        row: (data.from_bytes(images).double() - reference).flatten(1).pow(2).mean(1).sqrt().mean().item()
        for row, (images, _) in rows.items()
    }


def reference_sets(images, n, count):
    """`count` disjoint sets of n images from images (in order), for the spread of a measure at size n."""
    return [images[i * n : (i + 1) * n] for i in range(min(count, len(images) // n))]


def build_sampler_table(experiment, folder, device, time_budget, needed):
    """Draw and measure every row; write metrics.json and the first images of each row. Returns the meta."""
    config = experiment.config
    run = folder / "run"
    store.forget_other_runs(run, config)
    ddpm, judge = needed["mnist-ddpm"], needed["mnist-classifier"].model.to(device)
    n = num_samples(config, device)
    # float32: the table compares samplers down to an identity that holds to float32 rounding (DDPM respaced and
    # DDIM with eta 1 draw the same images); bfloat16 would move single pixels by tens of grey levels
    model = inference_network(ddpm.model, device, compile=True, bfloat16=False)
    rows = draw_rows(model, ddpm.schedule.to(device), config, run, device, n, time_budget)
    if rows is None:
        print(f"{experiment.name}: sampling not finished; run the build again", flush=True)
        return None
    evaluation_started = time.perf_counter()

    test_images = data.mnist_images(train=False)[0].to(device)
    test_features, test_probabilities = metrics.classify(judge, test_images)
    test_classes = metrics.class_fractions(test_probabilities)

    def measured(images):
        return measure(*metrics.classify(judge, data.from_bytes(images).to(device)), test_features, test_classes)

    found = {"num_samples": n, "steps": config["steps"], "samplers": config["samplers"], "rows": {}}
    distances = flow_distances(rows, config)
    for row, (images, seconds) in rows.items():
        found["rows"][row] = {**measured(images), "flow_distance": distances[row], "seconds_per_image": seconds / n}
    train_images = data.to_bytes(data.mnist_images(train=True)[0])
    stored = ddpm.tensors("samples.safetensors")["samples"]
    for name, images in (("real", train_images), ("ddpm-1000", stored)):
        found[name] = [measured(subset) for subset in reference_sets(images, n, config["reference_sets"])]
    grid = config["grid_images"]
    store.save_json(folder, "metrics.json", found)
    store.save_tensors(folder, "samples.safetensors", {row: images[:grid] for row, (images, _) in rows.items()})
    sampling_seconds = sum(seconds for _, seconds in rows.values())
    return {
        "seconds": sampling_seconds + time.perf_counter() - evaluation_started,
        "sampling_seconds": sampling_seconds,
    }
