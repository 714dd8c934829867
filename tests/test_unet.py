"""The U-Net denoiser (models/unet.py).

Shapes and errors are checked directly; the zero-initialised layers are checked
to make the fresh network exactly zero and each fresh residual block exactly its
skip path; self-attention is compared with an independent float64 computation
written out with einsum; the skip connections are traced with hooks; and the
parameter count of a small configuration is compared with a sum derived layer
by layer from the architecture.
"""

import math
import re

import pytest
import torch
from torch import nn

from diffusion_lib.models.unet import ResidualBlock, SelfAttention, Stage, UNet, group_norm

SMALL = dict(image_channels=1, image_size=8, channels=8, channel_mults=(1, 2), blocks_per_level=1)


SMALL_ATTENTION = dict(SMALL, attention_resolutions=(4,), dropout=0.0)


# 48 and 96 channels give GroupNorm groups of 3 channels; see test_narrow_unet_depends_on_t below for why that matters.
WIDE = dict(SMALL_ATTENTION, channels=48)


def perturb(module, scale=0.3, seed=0):
    """Add N(0, scale^2) noise to every parameter, so that no zero-initialised layer stays zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "config, shape",
    [
        (dict(image_channels=1, image_size=28, channels=16, channel_mults=(1, 2, 2)), (3, 1, 28, 28)),
        (
            dict(image_channels=3, image_size=32, channels=16, channel_mults=(1, 2, 2, 2), attention_resolutions=(16,)),
            (2, 3, 32, 32),
        ),
        (dict(image_channels=1, image_size=8, channels=8, channel_mults=(1, 2)), (4, 1, 8, 8)),
    ],
)
def test_output_has_the_input_shape_and_dtype(config, shape):
    torch.manual_seed(0)
    net = perturb(UNet(dropout=0.0, **config)).eval()
    x = torch.randn(shape)
    t = torch.arange(shape[0])
    out = net(x, t)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


def test_float64_network_keeps_float64():
    net = UNet(**SMALL_ATTENTION).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert net(x, torch.tensor([1, 2])).dtype == torch.float64


def test_default_unet_matches_the_documented_layout():
    net = UNet()
    assert 6.0e6 < count(net) < 7.0e6
    assert net.image_channels == 1 and net.image_size == 28 and net.num_classes is None
    # Three levels of two blocks plus two downsamplings; the decoder has one block more per level and two upsamplings.
    assert len(net.down) == 3 * 2 + 2
    assert len(net.up) == 3 * 3 + 2
    # Attention runs at resolution 7 only: the two encoder blocks, the first middle block, the three decoder blocks.
    attention = [m for m in net.modules() if isinstance(m, SelfAttention)]
    assert len(attention) == 2 + 1 + 3


def test_fresh_unet_outputs_exactly_zero():
    torch.manual_seed(0)
    net = UNet(**SMALL_ATTENTION)
    out = net(torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 10, 100, 999]))
    assert torch.equal(out, torch.zeros_like(out))
    # The zero comes from the output convolution alone: giving it weights makes the output nonzero.
    with torch.no_grad():
        net.output[-1].weight.normal_()
    assert (net(torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 10, 100, 999])).abs() > 0).all()


def test_output_depends_on_t():
    torch.manual_seed(0)
    net = perturb(UNet(**WIDE))
    x = torch.randn(1, 1, 8, 8).expand(4, -1, -1, -1)
    out = net(x, torch.tensor([5, 5, 6, 400]))
    assert torch.equal(out[0], out[1])  # same x and t, same output
    assert (out[0] - out[2]).abs().max() > 1e-3
    assert (out[0] - out[3]).abs().max() > 1e-3


def test_narrow_unet_depends_on_t():
    torch.manual_seed(0)
    net = perturb(UNet(**SMALL_ATTENTION))
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([5, 400]))
    assert (out[0] - out[1]).abs().max() > 1e-3


@pytest.mark.parametrize("attention", [(4,), ()])
def test_every_input_pixel_reaches_every_output(attention):
    torch.manual_seed(0)
    net = perturb(UNet(**dict(SMALL_ATTENTION, attention_resolutions=attention)))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    net(x, torch.tensor([3, 7])).sum().backward()
    assert (x.grad.abs() > 0).all()
    # And a single output pixel (a corner) depends on the opposite corner of the image.
    x.grad = None
    net(x, torch.tensor([3, 7]))[0, 0, 0, 0].backward()
    assert x.grad[0, 0, -1, -1].abs() > 0
    assert torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))  # the batch elements do not mix


@pytest.mark.parametrize(
    "config",
    [
        SMALL_ATTENTION,
        dict(image_channels=3, image_size=16, channels=8, channel_mults=(1, 2, 4), blocks_per_level=2),
    ],
)
def test_each_decoder_stage_consumes_one_encoder_activation_last_in_first_out(config):
    torch.manual_seed(0)
    net = perturb(UNet(**config))
    pushed, consumed = [], []
    handles = [net.input.register_forward_hook(lambda m, i, o: pushed.append(o))]
    handles += [layer.register_forward_hook(lambda m, i, o: pushed.append(o)) for layer in net.down]
    stages = [layer for layer in net.up if isinstance(layer, Stage)]
    handles += [stage.register_forward_pre_hook(lambda m, i: consumed.append(i[0])) for stage in stages]
    x = torch.randn(2, config["image_channels"], config["image_size"], config["image_size"])
    assert net(x, torch.tensor([1, 2])).shape == x.shape
    for handle in handles:
        handle.remove()

    blocks = config["blocks_per_level"]
    levels = len(config["channel_mults"])
    assert len(pushed) == 1 + len(net.down) == 1 + levels * blocks + (levels - 1)
    assert len(stages) == levels * (blocks + 1) == len(pushed)
    assert len(consumed) == len(stages)
    # The decoder's input is [h, skip]: its last channels are the encoder activations, taken in reverse order.
    for concatenated, skip in zip(consumed, reversed(pushed), strict=True):
        assert concatenated.shape[2:] == skip.shape[2:]
        assert torch.equal(concatenated[:, -skip.shape[1] :], skip)


@pytest.mark.parametrize(
    "channels, groups", [(48, 16), (64, 32), (8, 4), (32, 16), (24, 8), (96, 32), (3, 1), (2, 1), (128, 32)]
)
def test_group_norm_uses_gcd_groups_of_at_least_two_channels(channels, groups):
    norm = group_norm(channels)
    assert isinstance(norm, nn.GroupNorm)
    assert norm.num_groups == groups
    assert norm.num_channels == channels
    assert channels // groups >= 2 or channels == 1
    assert group_norm(12, groups=8).num_groups == 4


def test_fresh_residual_block_is_the_identity_for_equal_widths():
    torch.manual_seed(0)
    block = ResidualBlock(16, 16, embedding_dim=32)
    assert isinstance(block.skip, nn.Identity)
    x = torch.randn(3, 16, 5, 6)
    assert torch.equal(block(x, torch.randn(3, 32)), x)


def test_fresh_residual_block_is_a_1x1_projection_for_different_widths():
    torch.manual_seed(0)
    block = ResidualBlock(8, 16, embedding_dim=32)
    assert isinstance(block.skip, nn.Conv2d) and block.skip.kernel_size == (1, 1)
    x = torch.randn(3, 8, 5, 6)
    expected = torch.einsum("oc,bchw->bohw", block.skip.weight[:, :, 0, 0], x) + block.skip.bias[:, None, None]
    torch.testing.assert_close(block(x, torch.randn(3, 32)), expected, rtol=1e-5, atol=1e-6)


def test_trained_residual_block_depends_on_the_embedding():
    torch.manual_seed(0)
    block = perturb(ResidualBlock(48, 96, embedding_dim=32))  # groups of 3 channels in both norms
    x, e = torch.randn(1, 48, 5, 6), torch.randn(1, 32)
    projected = block.skip(x)
    assert (block(x, e) - projected).abs().max() > 1e-3  # conv2 has weights: no longer the skip path alone
    assert (block(x, e) - block(x, e + 1)).abs().max() > 1e-3


def reference_attention(x, norm_weight, norm_bias, groups, w_qkv, b_qkv, w_out, b_out, heads, eps):
    """x + W_o softmax(Q K^T / sqrt(d)) V, with group normalisation, written out in float64."""
    B, C, H, W = x.shape
    n = H * W
    grouped = x.reshape(B, groups, C // groups * n)
    mean = grouped.mean(dim=2, keepdim=True)
    variance = ((grouped - mean) ** 2).mean(dim=2, keepdim=True)
    normed = ((grouped - mean) / torch.sqrt(variance + eps)).reshape(B, C, n)
    normed = normed * norm_weight[:, None] + norm_bias[:, None]
    qkv = torch.einsum("oc,bcn->bon", w_qkv, normed) + b_qkv[:, None]
    d = C // heads
    q, k, v = (qkv[:, i * C : (i + 1) * C].reshape(B, heads, d, n) for i in range(3))
    scores = torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(d)
    weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    attended = torch.einsum("bhij,bhdj->bhdi", weights, v).reshape(B, C, n)
    out = torch.einsum("oc,bcn->bon", w_out, attended) + b_out[:, None]
    return x + out.reshape(B, C, H, W)


@pytest.mark.parametrize("channels, heads, size", [(64, 4, (3, 5)), (8, 2, (4, 4)), (12, 1, (2, 3))])
def test_self_attention_matches_an_explicit_float64_computation(channels, heads, size):
    torch.manual_seed(0)
    attention = perturb(SelfAttention(channels, heads=heads).double(), scale=0.5)
    assert attention.out.weight.abs().min() > 0
    x = torch.randn(2, channels, *size, dtype=torch.float64)
    expected = reference_attention(
        x,
        attention.norm.weight,
        attention.norm.bias,
        attention.norm.num_groups,
        attention.qkv.weight[:, :, 0, 0],
        attention.qkv.bias,
        attention.out.weight[:, :, 0, 0],
        attention.out.bias,
        heads,
        attention.norm.eps,
    )
    with torch.no_grad():
        actual = attention(x)
    assert (actual - x).abs().max() > 0.1  # the attention term is not negligible
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_fresh_self_attention_is_the_identity_and_heads_must_divide_channels():
    attention = SelfAttention(16)
    x = torch.randn(2, 16, 3, 3)
    assert torch.equal(attention(x), x)
    with pytest.raises(ValueError, match=r"channels \(10\) must be divisible by heads \(4\)"):
        SelfAttention(10)


def test_null_class_is_the_default_label_and_labels_change_the_output():
    torch.manual_seed(0)
    net = perturb(UNet(num_classes=10, **WIDE))
    assert net.class_embedding.num_embeddings == 11
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 200, 999])
    unlabelled = net(x, t)
    assert torch.equal(unlabelled, net(x, t, torch.full((4,), 10)))
    three = net(x, t, torch.full((4,), 3))
    four = net(x, t, torch.full((4,), 4))
    assert (unlabelled - three).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    assert (three - four).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    # Labels act per example: mixing labels in one batch gives each example its own output.
    mixed = net(x, t, torch.tensor([3, 4, 10, 3]))
    torch.testing.assert_close(mixed, torch.stack([three[0], four[1], unlabelled[2], three[3]]))


def test_unconditional_net_rejects_labels():
    net = UNet(**SMALL_ATTENTION)
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))


@pytest.mark.parametrize("shape", [(2, 1, 8, 9), (2, 3, 8, 8), (1, 8, 8), (2, 1, 16, 16)])
def test_bad_input_shape_names_the_expected_shape(shape):
    net = UNet(**SMALL_ATTENTION)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\), got " + re.escape(str(shape))):
        net(torch.randn(shape), torch.zeros(shape[0], dtype=torch.long))


@pytest.mark.parametrize("image_size, mults", [(30, (1, 2, 2)), (28, (1, 2, 2, 2)), (9, (1, 2))])
def test_image_size_must_be_divisible_by_the_downsampling(image_size, mults):
    with pytest.raises(ValueError, match=rf"image_size \({image_size}\) must be divisible by 2\^\(levels - 1\)"):
        UNet(image_size=image_size, channel_mults=mults)
    UNet(image_size=image_size * 2 ** (len(mults) - 1), channels=8, channel_mults=mults)  # divisible: accepted


def conv(i, o, k):
    return i * o * k * k + o


def linear(i, o):
    return i * o + o


def norm(c):
    return 2 * c  # GroupNorm: a scale and a shift per channel


def residual(i, o, e):
    return norm(i) + conv(i, o, 3) + linear(e, o) + norm(o) + conv(o, o, 3) + (0 if i == o else conv(i, o, 1))


def attention(c):
    return norm(c) + conv(c, 3 * c, 1) + conv(c, c, 1)


def test_parameter_count_matches_a_layer_by_layer_sum():
    # channels=8, channel_mults=(1, 2), one block per level, attention at 4x4, on 1x8x8 images.
    e = 4 * 8  # embedding width
    time_embedding = linear(8, e) + linear(e, e)
    stem = conv(1, 8, 3)
    # Encoder: level 0 at 8x8 (width 8), downsample, level 1 at 4x4 (width 16, attention).
    # The activations saved for the decoder have widths [8 (stem), 8, 8 (downsample), 16].
    down = residual(8, 8, e) + conv(8, 8, 3) + residual(8, 16, e) + attention(16)
    middle = residual(16, 16, e) + attention(16) + residual(16, 16, e)
    # Decoder: level 1 at 4x4 takes skips 16 then 8, upsample, level 0 at 8x8 takes skips 8 then 8.
    up = residual(16 + 16, 16, e) + attention(16) + residual(16 + 8, 16, e) + attention(16)
    up += conv(16, 16, 3)
    up += residual(16 + 8, 8, e) + residual(8 + 8, 8, e)
    head = norm(8) + conv(8, 1, 3)
    total = time_embedding + stem + down + middle + up + head
    assert total == 44_969
    net = UNet(**SMALL_ATTENTION)
    assert count(net) == total
    # Part by part, so that a mismatch points to its place.
    assert count(net.time_embedding) == time_embedding
    assert count(net.down) == down
    assert count(net.middle) == middle
    assert count(net.up) == up
    assert count(net.output) == head
    # A class embedding adds (num_classes + 1) rows of the embedding width.
    assert count(UNet(num_classes=10, **SMALL_ATTENTION)) == total + 11 * e


def test_the_unet_rejects_labels_of_the_wrong_shape_type_or_range():
    torch.manual_seed(0)
    net = UNet(image_channels=1, image_size=8, channels=8, channel_mults=(1, 2), attention_resolutions=(4,),
               num_classes=10).eval()  # fmt: skip
    with torch.no_grad():  # perturb the zero-initialised layers, through which the label would not reach the output
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    wrong = {
        "shape": (torch.tensor([[1], [2]]), "got torch.int64 (2, 1)"),
        "length": (torch.tensor([1, 2, 3]), "got torch.int64 (3,)"),
        "float": (torch.tensor([1.0, 2.0]), "got torch.float32 (2,)"),
        "bool": (torch.tensor([True, False]), "got torch.bool (2,)"),
        "uint8": (torch.tensor([1, 2], dtype=torch.uint8), "got torch.uint8 (2,)"),
    }
    for y, got in wrong.values():
        expected = f"labels y must be an int64 or int32 tensor of shape (2,), {got}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            net(x, t, y)
    for bad in (-1, 11):
        with pytest.raises(ValueError, match=re.escape(f"label {bad} out of range: allowed 0..9, or 10 for the null")):
            net(x, t, torch.tensor([3, bad]))
    with torch.no_grad():
        null = net(x, t)  # no labels: the null label
        assert torch.equal(net(x, t, torch.tensor([10, 10])), null)
        assert torch.equal(net(x, t, torch.tensor([0, 9], dtype=torch.int32)), net(x, t, torch.tensor([0, 9])))
        assert not torch.allclose(net(x, t, torch.tensor([0, 9])), null)
    unconditional = UNet(image_channels=1, image_size=8, channels=8, channel_mults=(1, 2), attention_resolutions=(4,))
    with pytest.raises(ValueError, match=re.escape("this UNet is unconditional (num_classes=None) but got labels y")):
        unconditional(x, t, torch.tensor([1, 2]))
