"""The small convolutional classifier (models/classifier.py), the judge of generated digits and FID's feature map:
the shapes of its features and logits, the ReLU range of its features, and its input checks. That it learns
is checked in test_fit.py (fit_classifier)."""

import pytest
import torch

from diffusion_lib.models.classifier import Classifier


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (1, 8)])
def test_classifier_shapes(channels, size):
    torch.manual_seed(0)
    classifier = Classifier(image_channels=channels, image_size=size).eval()
    x = torch.randn(5, channels, size, size)
    features = classifier.features(x)
    assert features.shape == (5, 128)
    assert (features >= 0).all()  # the hidden layer's ReLU activations
    logits = classifier(x)
    assert logits.shape == (5, 10)
    torch.testing.assert_close(logits, classifier.logits(features))  # in eval mode dropout is the identity
    assert Classifier(num_classes=3, feature_dim=16)(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_classifier_errors():
    classifier = Classifier()
    for shape in [(2, 1, 28, 27), (2, 3, 28, 28), (1, 28, 28)]:
        with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 28, 28\)"):
            classifier(torch.randn(shape))
    with pytest.raises(ValueError, match="image_size must be divisible by 4.*got 30"):
        Classifier(image_size=30)
