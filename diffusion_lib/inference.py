"""A trained network prepared for sampling on a device, by what the device offers.

Sampling calls the same network hundreds of times without gradients, so the
way it runs matters more than anywhere else. Measured on the stored MNIST
U-Net (benchmarks/cpu_unet_throughput.py):

* a CPU whose oneDNN has native bfloat16 (AVX512-BF16 or AMX) runs it about
  twice as fast under bfloat16 autocast as in float32; in the memory layout
  it has (channels-last was slower there, uncompiled);
* a CPU with AVX2 only emulates bfloat16, slowly, so it stays in float32; the
  gain there can only come from compiling, in channels-last layout;
* a CUDA GPU runs it under bfloat16 autocast.

Compiling costs about a minute on a CPU before the first call, so it pays
only for long runs (the artifact builders, large ``diffusion-sample`` runs)
and is asked for explicitly. Outputs always come back in float32, so the
samplers' arithmetic stays in float32 whatever the network runs in; a caller
whose measurement needs float32's accuracy throughout passes
``bfloat16=False``.
"""

import copy
import functools
from dataclasses import dataclass

import torch


def default_device():
    """The device the book's live cells run on: "cuda" when a GPU is available (Colab's GPU runtime), else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def unavailable_device(name):
    """Why the device ``name`` cannot be used on this machine, or None: a misspelling, a kind of device the library
    does not run on, or a GPU the machine lacks."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        return f"{name!r} is not a device; use cpu, cuda or cuda:N"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"{name!r} is not a device this library runs on; use cpu, cuda or cuda:N"
    if not torch.cuda.is_available():
        return f"{name} is not available: this machine has no CUDA GPU (use cpu)"
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"{name} is not available: this machine has {torch.cuda.device_count()} CUDA GPU(s), cuda:0 first"
    return None


@functools.cache
def cpu_has_native_bf16():
    """Whether this CPU's oneDNN computes in bfloat16 natively (AVX512-BF16 or AMX), not by emulation."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class InferencePlan:
    """How a network runs on a device: autocast dtype (None: float32), channels-last layout, compiled."""

    autocast: torch.dtype | None
    channels_last: bool
    compiled: bool

    def describe(self):
        precision = "float32" if self.autocast is None else f"{str(self.autocast).removeprefix('torch.')} autocast"
        layout = ", channels-last" if self.channels_last else ""
        return precision + layout + (", compiled" if self.compiled else "")


def inference_plan(device, compile=False, bfloat16=True, native_bf16=None):
    """The plan for a device (see the module's docstring). ``bfloat16=False`` keeps float32 everywhere, for
    measurements that need its accuracy; native_bf16 overrides the CPU's own answer (tests)."""
    device = torch.device(device)
    if device.type == "cpu":
        native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    else:
        native = device.type == "cuda"
    precision = torch.bfloat16 if bfloat16 and native else None
    return InferencePlan(precision, channels_last=compile, compiled=compile)


# How far a compiled network's first output may lie from the float32 eager network's, relative to its largest value:
# float32 summation order (1e-5 seen), or bfloat16's rounding (2^-8) accumulated over the layers (1.4 roundings seen).
AGREEMENT = {None: 1e-4, torch.bfloat16: 0.05}


class InferenceNetwork(torch.nn.Module):
    """network(x, t, *rest) run by a plan: inputs in the plan's layout, autocast around the call, float32 out.

    A compiled network is checked at its first call against ``reference`` (the same network, eager, float32): a
    compiler that computes something else (seen: NaN everywhere, on a CPU whose vector instructions were limited by
    ATEN_CPU_CAPABILITY) raises a RuntimeError instead of sampling garbage.
    """

    def __init__(self, network, device, plan, reference=None):
        super().__init__()
        self.device_type, self.plan = torch.device(device).type, plan
        self.network, self.reference = network, reference
        self.num_classes = None  # set by inference_network from the network it prepared (guidance reads it)

    def run(self, x, t, *rest):
        if self.plan.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.plan.autocast or torch.float32
        with torch.autocast(self.device_type, dtype=dtype, enabled=self.plan.autocast is not None):
            return self.network(x, t, *rest).float().contiguous()

    def forward(self, x, t, *rest):
        output = self.run(x, t, *rest)
        if self.reference is not None:
            expected = self.reference(x, t, *rest).float()
            gap = ((output - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()
            if not gap <= AGREEMENT[self.plan.autocast]:  # also catches NaN
                raise RuntimeError(
                    f"the compiled network disagrees with the eager one (largest difference {gap:.2g} of the output's "
                    f"largest value; allowed {AGREEMENT[self.plan.autocast]}): run it with compile=False"
                )
            self.reference = None
        return output


def inference_network(network, device, compile=False, bfloat16=True):
    """The network prepared for sampling on device by :func:`inference_plan`: a copy, in eval mode, without
    gradients; the original is left as it was. Any callable (x, t, *rest) -> tensor works; layout and
    compilation apply to a ``torch.nn.Module`` only."""
    plan, original, reference = inference_plan(device, compile, bfloat16), network, None
    if isinstance(network, torch.nn.Module):
        network = copy.deepcopy(network).to(device).eval().requires_grad_(False)
        if plan.channels_last:
            network = network.to(memory_format=torch.channels_last)
        if plan.compiled:
            reference, network = network, torch.compile(network, dynamic=False)
    else:
        plan = InferencePlan(plan.autocast, channels_last=False, compiled=False)
    prepared = InferenceNetwork(network, device, plan, reference)
    prepared.num_classes = getattr(original, "num_classes", None)
    return prepared
