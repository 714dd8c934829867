"""The network prepared for sampling: the plan each kind of device gets, and what the prepared network computes."""

import pytest
import torch

from diffusion_lib import inference
from diffusion_lib.models.unet import UNet


@pytest.mark.parametrize(
    ("device", "native_bf16", "compile", "expected"),
    [
        ("cpu", True, False, inference.InferencePlan(torch.bfloat16, channels_last=False, compiled=False)),
        ("cpu", False, False, inference.InferencePlan(None, channels_last=False, compiled=False)),
        ("cpu", False, True, inference.InferencePlan(None, channels_last=True, compiled=True)),
        ("cpu", True, True, inference.InferencePlan(torch.bfloat16, channels_last=True, compiled=True)),
        ("cuda", None, False, inference.InferencePlan(torch.bfloat16, channels_last=False, compiled=False)),
        ("cuda:1", None, True, inference.InferencePlan(torch.bfloat16, channels_last=True, compiled=True)),
    ],
)
def test_each_device_gets_its_plan(device, native_bf16, compile, expected):
    # bfloat16 only where the CPU computes it natively: elsewhere oneDNN emulates it, slower than float32
    assert inference.inference_plan(device, compile, native_bf16=native_bf16) == expected
    # and never where the caller needs float32's accuracy
    float32 = inference.inference_plan(device, compile, bfloat16=False, native_bf16=native_bf16)
    assert float32 == inference.InferencePlan(None, channels_last=compile, compiled=compile)


def test_the_plan_follows_what_onednn_reports():
    expected = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert inference.cpu_has_native_bf16() == expected
    assert (inference.inference_plan("cpu").autocast is torch.bfloat16) == expected


def test_the_plan_describes_itself():
    plan = inference.InferencePlan(torch.bfloat16, channels_last=True, compiled=True)
    assert plan.describe() == "bfloat16 autocast, channels-last, compiled"
    assert inference.InferencePlan(None, False, False).describe() == "float32"


def small_unet():
    """A small U-Net with random weights everywhere (its output layer starts at zero otherwise)."""
    torch.manual_seed(0)
    network = UNet(image_size=8, channels=8, channel_mults=(1, 2), attention_resolutions=(4,), num_classes=3)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0, 0.2)
    return network.eval()


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_prepared_network_agrees_with_float32_and_returns_float32(monkeypatch, native_bf16):
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native_bf16)
    network = small_unet()
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 50, 500]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        reference = network(x, t, y)
        output = inference.inference_network(network, "cpu")(x, t, y)
    assert output.dtype == torch.float32 and output.shape == reference.shape
    relative = ((output - reference).abs().max() / reference.abs().max()).item()
    if native_bf16:
        # bfloat16 keeps 8 significant bits (rounding 2^-8 = 0.0039 of a value); the errors of a few layers add up
        assert 0 < relative < 0.05
    else:
        assert relative == 0  # the same float32 operations
    assert inference.inference_network(network, "cpu").num_classes == network.num_classes == 3
    assert next(network.parameters()).requires_grad is True and network.training is False  # the original untouched


def test_compiling_is_asked_for_and_takes_the_channels_last_copy(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, dynamic=None: compiled.append(module) or module)
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    network = small_unet()
    prepared = inference.inference_network(network, "cpu", compile=True)
    assert len(compiled) == 1 and compiled[0] is not network
    assert compiled[0].input.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 9]), torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.allclose(prepared(x, t, y), network(x, t, y), atol=1e-5)  # layout changes only the summation order


def test_any_callable_runs_without_layout_or_compiling():
    def model(x, t):
        return 2 * x

    prepared = inference.inference_network(model, "cpu", compile=True)
    assert not prepared.plan.channels_last and not prepared.plan.compiled
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(prepared(x, torch.zeros(2, dtype=torch.long)), 2 * x)


def test_the_default_device_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert inference.default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference.default_device() == "cpu"


class Corrupted(torch.nn.Module):
    """Stands in for a compiler that computes something else: the network's output, shifted or turned to NaN."""

    def __init__(self, network, shift):
        super().__init__()
        self.network, self.shift = network, shift

    def forward(self, *args):
        return self.network(*args) + self.shift


@pytest.mark.parametrize("shift", [float("nan"), 0.5])
def test_a_compiled_network_that_computes_something_else_is_refused(monkeypatch, shift):
    monkeypatch.setattr(torch, "compile", lambda module, dynamic=None: Corrupted(module, shift))
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    prepared = inference.inference_network(small_unet(), "cpu", compile=True)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 9]), torch.tensor([1, 3])
    with torch.no_grad(), pytest.raises(RuntimeError, match="compiled network disagrees with the eager one"):
        prepared(x, t, y)


def test_a_compiled_network_is_checked_at_its_first_call_only(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, dynamic=None: module)
    prepared = inference.inference_network(small_unet(), "cpu", compile=True)
    counting = Counting(prepared.reference)
    prepared.reference = counting
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 9]), torch.tensor([1, 3])
    with torch.no_grad():
        prepared(x, t, y)
        prepared(x, t, y)
    assert counting.calls == 1 and prepared.reference is None


class Counting(torch.nn.Module):
    def __init__(self, network):
        super().__init__()
        self.network, self.calls = network, 0

    def forward(self, *args):
        self.calls += 1
        return self.network(*args)


def test_a_device_the_machine_lacks_is_named_with_what_to_use(monkeypatch):
    from diffusion_lib.inference import unavailable_device

    assert unavailable_device("cpu") is None
    assert unavailable_device("tpu") == "'tpu' is not a device; use cpu, cuda or cuda:N"
    assert unavailable_device("mps") == "'mps' is not a device this library runs on; use cpu, cuda or cuda:N"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert unavailable_device("cuda") == "cuda is not available: this machine has no CUDA GPU (use cpu)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert unavailable_device("cuda") is None and unavailable_device("cuda:1") is None
    assert unavailable_device("cuda:2") == "cuda:2 is not available: this machine has 2 CUDA GPU(s), cuda:0 first"


@pytest.mark.parametrize("device", ["tpu", "cuda:7"])
def test_every_command_refuses_a_device_the_machine_lacks_in_one_line(device, monkeypatch, capsys, tmp_path):
    from diffusion_lib import artifacts, generate, train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    commands = {
        artifacts.main: ["build", "mnist-ddpm", "--device", device],
        generate.main: ["mnist-ddpm", "--n", "2", "--device", device, "--out", str(tmp_path / "out")],
        train.main: ["--steps", "5", "--dataset", "digits", "--device", device, "--out", str(tmp_path / "run")],
    }
    for command, argv in commands.items():
        with pytest.raises(SystemExit) as stopped:
            command(argv)
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert stopped.value.code == 2 and "argument --device:" in error and "Traceback" not in error
        assert (device in error) and ("use cpu" in error or "that GPU" in error), error
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
