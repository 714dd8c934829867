"""mnist-guidance: the guidance trade-off on mnist-cfg, every setting from the same noises.

A setting is classifier-free guidance at a scale ("free-W"), classifier guidance of mnist-cfg's unconditional
(null-label) model by mnist-noisy-classifier ("classifier-W"), or classifier-free guidance applied only in an
interval of noise levels, the conditional model elsewhere ("interval-W"). Each draws the same number of images of
every digit from the same x_T with DDIM (eta 0), chunk by chunk (each chunk saved, so that a build resumes); the
images are stored as bytes beside the requested labels, and the judge's agreement with them.
"""

import torch

from .. import data, metrics, store
from ..guidance import classifier_free, classifier_guided, limited_interval
from ..inference import inference_network
from ..resumable import TimeBudget, draw_in_chunks, seeded_generator
from ..sampling import sample
from ..schedules import NoiseSchedule


def setting_names(config):
    """The settings of the sweep, "<kind>-<scale>", in the order of the config."""
    return [f"{kind}-{scale:g}" for kind in ("free", "classifier", "interval") for scale in config[kind]["scales"]]


def per_class(config, device):
    """Images of each digit per setting: the full size on a GPU, a smaller one on a CPU."""
    return config["per_class"]["cuda" if torch.device(device).type == "cuda" else "cpu"]


def guided_model(setting, config, conditional, classifier, schedule, labels):
    """The callable (x, t) -> eps of a setting, for the requested labels."""
    kind, scale = setting.rsplit("-", 1)
    scale = float(scale)
    if kind == "free":
        return classifier_free(conditional, labels, scale)
    if kind == "classifier":
        return classifier_guided(conditional, classifier, schedule, labels, scale)
    sigma_low, sigma_high = config["interval"]["sigma"]
    plain = classifier_free(conditional, labels, 1.0)
    return limited_interval(classifier_free(conditional, labels, scale), plain, schedule, sigma_low, sigma_high)


def build_guidance_sweep(experiment, folder, device, time_budget, needed):
    """Draw every setting chunk by chunk into folder/run, then store the images, labels and judge's agreement.
    Returns the meta, or None when the time budget ran out first."""
    config, budget = experiment.config, TimeBudget(time_budget)
    cfg, noisy = needed["mnist-cfg"], needed["mnist-noisy-classifier"]
    classifier_schedule = NoiseSchedule.named(noisy.meta["config"]["schedule"], T=noisy.meta["config"]["T"])
    if not torch.equal(classifier_schedule.alpha_bars, cfg.schedule.alpha_bars):
        raise ValueError("mnist-noisy-classifier was trained on another noise schedule than mnist-cfg samples with")
    run = folder / "run"
    models = {name: needed[name].meta["files"]["weights.safetensors"] for name in needed}  # rebuilt models: redraw
    store.forget_other_runs(run, {**config, "device": device.type, "models": models})
    conditional, classifier = inference_network(cfg.model, device, compile=True), noisy.model.to(device)
    schedule = cfg.schedule.to(device)
    chunk_size = config["chunk_per_class"] * cfg.meta["num_classes"]
    labels = torch.arange(cfg.meta["num_classes"], device=device).repeat_interleave(config["chunk_per_class"])
    chunks = per_class(config, device) // config["chunk_per_class"]

    def draw(setting, chunk):
        generator = seeded_generator(config["seed"], chunk, device)
        x_T = torch.randn((chunk_size, *cfg.image_shape), generator=generator, device=device)
        model = guided_model(setting, config, conditional, classifier, schedule, labels)
        return sample(model, schedule, x_T.shape, x_T=x_T, sampler="ddim", num_steps=config["sampling_steps"])

    drawn = draw_in_chunks(run, setting_names(config), chunks, draw, budget.left())
    if drawn is None:
        print(f"{experiment.name}: not finished; run the build again", flush=True)
        return None

    judge = needed["mnist-classifier"].model.to(device)
    requested = labels.repeat(chunks)
    images, found, seconds = {}, {}, 0.0
    for setting, (pixels, setting_seconds) in drawn.items():
        images[setting] = pixels
        probabilities = metrics.classify(judge, data.from_bytes(pixels).to(device))[1]
        found[setting] = {
            "agreement": (probabilities.argmax(dim=1) == requested).double().mean().item(),
            "seconds_per_image": setting_seconds / len(requested),
        }
        seconds += setting_seconds
    store.save_tensors(folder, "samples.safetensors", {**images, "labels": requested.cpu()})
    images_per_class = chunks * config["chunk_per_class"]
    store.save_json(folder, "metrics.json", {"settings": found, "images_per_class": images_per_class})
    agreements = ", ".join(f"{setting} {row['agreement']:.3f}" for setting, row in found.items())
    print(f"{experiment.name}: the judge's agreement with the requested digit: {agreements}", flush=True)
    return {"seconds": seconds, "images_per_setting": len(requested)}
