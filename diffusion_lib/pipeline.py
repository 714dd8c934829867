"""The trained model as one object: what it takes to draw samples from a trained network, and the drawing.

A :class:`Pipeline` holds the network, the noise schedule it was trained on, what it predicts (eps, x_0 or v), the
shape of what it draws, its number of classes (for a conditional network) and, for a model of latents, the decoder
that turns a drawn latent into an image. Stored artifacts, training runs, the training engine's sample grids and the
``diffusion-sample`` command all open one, so that conditioning, guidance and decoding are applied here and nowhere
else.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .inference import inference_network
from .parameterization import as_eps_model
from .sampling import sample
from .schedules import NoiseSchedule


@dataclass
class Pipeline:
    """A trained diffusion model: ``network(x_t, t[, y])`` predicting ``prediction`` on the steps of ``schedule``,
    drawing tensors of ``image_shape``; ``num_classes`` for a conditional network (whose label ``num_classes``
    means "no label"); ``decoder`` (latents -> images) for a model of latents, None when the samples are images."""

    network: Callable
    schedule: NoiseSchedule
    prediction: str
    image_shape: tuple
    num_classes: int | None = None
    decoder: Callable | None = None

    @classmethod
    def from_config(cls, network, config, image_shape, num_classes=None):
        """The pipeline of a network trained by the engine from ``config`` (its schedule, T and prediction)."""
        schedule = NoiseSchedule.named(config.schedule, T=config.T)
        return cls(network, schedule, config.prediction, tuple(image_shape), num_classes)

    @property
    def model(self):
        """The network as the samplers take it: (x_t, t[, y]) -> eps (eq. `q-marginal` or `fw-v-inverse` convert
        an x_0 or v prediction)."""
        return as_eps_model(self.network, self.schedule, self.prediction)

    def conditioned(self, model, labels, guidance_scale):
        """model(x, t) for the sampler: the unconditional model as it is, the conditional one with its labels bound,
        or guided without a classifier at scale w (:func:`~diffusion_lib.guidance.classifier_free`, eq. `cfg`)."""
        if guidance_scale is not None and labels is None:
            raise ValueError("guidance_scale needs labels: guidance steers towards a class")
        if labels is not None and self.num_classes is None:
            raise ValueError("labels need a conditional model; this one was trained without labels")
        if labels is None:
            return model
        if guidance_scale is not None:
            from .guidance import classifier_free  # here, so that opening a model does not import guidance

            return classifier_free(model, labels, guidance_scale, null_label=self.num_classes)
        return lambda x, t: model(x, t, labels)

    @torch.no_grad()
    def sample(self, n, sampler="ddpm", steps=None, eta=0.0, seed=0, device="cpu", labels=None, progress=False,
               guidance_scale=None, bfloat16=True, compile=False, **options):  # fmt: skip
        """n samples (n, *image_shape), decoded when there is a decoder, clamped to [-1, 1], on the CPU in float32.

        ``sampler`` names a row of :data:`~diffusion_lib.sampling.SAMPLERS` and ``eta`` and ``options`` are its
        own; ``steps`` respaces the chain (all T steps when None); ``labels`` (n,) condition a conditional model,
        and ``guidance_scale`` w, when given, guides it without a classifier (w = 1 is the plain conditional
        model). The network runs as :func:`~diffusion_lib.inference.inference_network` prepares it for the
        device (``bfloat16=False`` keeps float32 throughout). The same seed gives the same samples.
        """
        if labels is not None:
            labels = torch.as_tensor(labels, device=device)
        schedule = self.schedule.to(device)
        network = inference_network(self.network, device, compile=compile, bfloat16=bfloat16)
        model = self.conditioned(as_eps_model(network, schedule, self.prediction), labels, guidance_scale)
        generator = torch.Generator(device).manual_seed(seed)
        x = sample(model, schedule, (n, *self.image_shape), sampler=sampler, num_steps=steps, eta=eta,
                   generator=generator, device=device, progress=progress, **options)  # fmt: skip
        if self.decoder is not None:
            x = self.decoder(x)
        return x.clamp(-1, 1).float().cpu()
