"""The trained model as one object: what it samples is the sampler run on its network as the prediction type,
labels and guidance say (in float64 where exactness is asserted), decoded when it has a decoder; opened alike from a
stored artifact and a training run."""

import pytest
import torch

from diffusion_lib.guidance import classifier_free
from diffusion_lib.parameterization import as_eps_model
from diffusion_lib.pipeline import Pipeline
from diffusion_lib.sampling import sample
from diffusion_lib.schedules import NoiseSchedule

SHAPE = (1, 4, 4)


class Toy(torch.nn.Module):
    """A network of a few weights, (x, t[, y]) -> a prediction depending on all three, so that a wrong step, a
    dropped label or a wrong prediction type changes the samples."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.3))
        self.by_label = torch.nn.Parameter(torch.tensor([0.1, -0.2, 0.4, 0.0]))  # the last: no label

    def forward(self, x, t, y=None):
        shift = 0.0 if y is None else self.by_label[y].view(-1, 1, 1, 1)
        return self.scale * x * (1 + t.view(-1, 1, 1, 1) / 10) + shift


def toy_pipeline(prediction="eps", num_classes=None, decoder=None):
    schedule = NoiseSchedule.linear(T=20)
    return Pipeline(Toy(), schedule, prediction, SHAPE, num_classes, decoder)


def by_hand(model, schedule, n, seed, **options):
    x = sample(model, schedule, (n, *SHAPE), generator=torch.Generator().manual_seed(seed), **options)
    return x.clamp(-1, 1)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_pipeline_samples_its_network_as_its_prediction_type(prediction):
    pipeline = toy_pipeline(prediction)
    drawn = pipeline.sample(3, sampler="ddim", steps=5, seed=2, bfloat16=False)
    model = as_eps_model(pipeline.network, pipeline.schedule, prediction)
    torch.testing.assert_close(drawn, by_hand(model, pipeline.schedule, 3, 2, sampler="ddim", num_steps=5), rtol=0,
                               atol=0)  # fmt: skip
    x, t = torch.randn(2, *SHAPE), torch.tensor([3, 17])
    torch.testing.assert_close(pipeline.model(x, t), model(x, t), rtol=0, atol=0)


def test_labels_condition_and_guidance_is_classifier_free_guidance_of_the_same_network():
    pipeline = toy_pipeline(num_classes=3)
    labels = torch.tensor([0, 2, 1])
    conditioned = pipeline.sample(3, sampler="ddpm", steps=4, seed=1, labels=labels, bfloat16=False)
    expected = by_hand(lambda x, t: pipeline.network(x, t, labels), pipeline.schedule, 3, 1, num_steps=4)
    torch.testing.assert_close(conditioned, expected, rtol=0, atol=0)
    guided = pipeline.sample(3, sampler="ddim", steps=4, seed=1, labels=labels, guidance_scale=2.5, bfloat16=False)
    model = classifier_free(pipeline.network, labels, 2.5, null_label=3)
    torch.testing.assert_close(guided, by_hand(model, pipeline.schedule, 3, 1, sampler="ddim", num_steps=4), rtol=0,
                               atol=0)  # fmt: skip
    assert not torch.equal(guided, conditioned)


def test_a_decoder_turns_what_was_drawn_into_the_images_before_the_clamp():
    def decoder(latents):
        return torch.nn.functional.interpolate(latents, scale_factor=2) / 4  # larger, and pulled inside [-1, 1]

    pipeline = toy_pipeline(decoder=decoder)
    images = pipeline.sample(2, sampler="euler", steps=4, seed=7, bfloat16=False)
    assert images.shape == (2, 1, 8, 8)
    latents = sample(pipeline.model, pipeline.schedule, (2, *SHAPE), sampler="euler", num_steps=4,
                     generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert latents.abs().max() > 1  # decoded before clamping: a clamp first would change these
    torch.testing.assert_close(images, decoder(latents).clamp(-1, 1), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("num_classes", "arguments", "message"),
    [
        (None, {"labels": [0, 1]}, "labels need a conditional model; this one was trained without labels"),
        (3, {"guidance_scale": 2.0}, "guidance_scale needs labels"),
        (3, {"labels": [0, 1], "sampler": "heun", "eta": 0.5}, "sampler 'heun' takes no option 'eta'"),
    ],
)
def test_a_request_the_model_cannot_serve_is_a_value_error_naming_it(num_classes, arguments, message):
    with pytest.raises(ValueError, match=message):
        toy_pipeline(num_classes=num_classes).sample(2, steps=3, **arguments)


def test_from_config_takes_the_schedule_and_prediction_the_network_was_trained_with(tiny_config, tmp_path):
    config = tiny_config(tmp_path, schedule="cosine", T=50, prediction="v")
    pipeline = Pipeline.from_config(Toy(), config, [1, 8, 8], 3)
    expected = NoiseSchedule.cosine(T=50)
    torch.testing.assert_close(pipeline.schedule.alpha_bars, expected.alpha_bars, rtol=0, atol=0)
    assert (pipeline.prediction, pipeline.image_shape, pipeline.num_classes) == ("v", (1, 8, 8), 3)
