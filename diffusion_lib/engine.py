"""The training engine of image U-Nets: :func:`train` minimises the denoising loss (eq. `l-simple`) with
AdamW, a linear warm-up then a half-cosine learning rate, gradient clipping
and an exponential moving average (EMA) of the weights. On CUDA it runs the
network in bfloat16 autocast, channels-last and compiled. It writes
safetensors checkpoints and resumes exactly: every batch and every draw of
(t, eps) is a function of (seed, step), and the checkpoint restores the
weights, the EMA, the optimizer's moments and the global generators (which
dropout draws from). Under ``torchrun`` it trains with DistributedDataParallel,
each process taking its share of the same global batch.

A run folder holds config.json (its settings, readable), checkpoint.safetensors,
ema.safetensors (the EMA weights, with the config, image shape and number of
classes), history.json (the loss every ``log_every`` steps) and, every
``sample_every`` epochs, a grid samples_epoch_N.png drawn by the EMA network
with ``sample_steps`` steps.
Its command line is :mod:`diffusion_lib.train`.
"""

import copy
import dataclasses
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import checkpoints, data
from .distributed import Process
from .fit import cosine_learning_rate, optimisation_step
from .losses import denoising_loss
from .models.unet import UNet
from .pipeline import Pipeline
from .schedules import NoiseSchedule
from .train_config import TrainConfig, check, differences, run_folder


def build_unet(config, image_shape, num_classes=None):
    """The U-Net a config describes, for images of shape (C, H, W) (and num_classes labels when conditional)."""
    channels, size, _ = image_shape
    return UNet(image_channels=channels, image_size=size, num_classes=num_classes, **config.model_kwargs())


def warmup_cosine_learning_rate(lr, step, steps, warmup):
    """Linear warm-up from lr / warmup to lr over `warmup` steps, then a half-cosine decay to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return cosine_learning_rate(lr, step - warmup, max(steps - warmup, 1))


@torch.no_grad()
def ema_update(ema, model, decay):
    """theta_ema <- decay theta_ema + (1 - decay) theta, parameter by parameter."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def epoch_batches(n, batch_size, seed, start_step):
    """Yield the index tensor of every global batch from start_step on: a fresh permutation per epoch.

    The permutation of epoch e depends only on (seed, e), so a resumed run
    sees the same batches as an uninterrupted one; the last partial batch of
    each epoch is dropped.
    """
    steps_per_epoch = n // batch_size
    epoch, position = divmod(start_step, steps_per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for i in range(position, steps_per_epoch):
            yield order[i * batch_size : (i + 1) * batch_size]
        epoch, position = epoch + 1, 0


def step_noise(config, step, shape, device):
    """The (t, eps) of a global batch at a step: a function of (seed, step) only."""
    generator = torch.Generator(device).manual_seed(config.seed * 1_000_003 + step)
    t = torch.randint(0, config.T, shape[:1], generator=generator, device=device)
    return t, torch.randn(shape, generator=generator, device=device)


def null_label_mask(config, step, batch_size, device):
    """Which labels of a global batch a conditional run replaces by the null label (each with probability
    class_dropout): a function of (seed, step) only, drawn apart from (t, eps). Its seed is that of
    :func:`step_noise` with the low 32 bits flipped by a constant, so the two differ in the 32 bits that a
    CPU generator keeps."""
    generator = torch.Generator(device).manual_seed((config.seed * 1_000_003 + step) ^ 0x9E3779B9)
    return torch.rand(batch_size, generator=generator, device=device) < config.class_dropout


class LossLog:
    """The training curve: every log record, and the loss summed since the last one."""

    def __init__(self, history=(), loss_sum=0.0, steps=0):
        self.history, self.loss_sum, self.steps = list(history), loss_sum, steps
        self.window_start = time.perf_counter()

    def add(self, loss):
        self.loss_sum = self.loss_sum + loss.detach()  # stays on the device until the next record
        self.steps += 1

    def record(self, step, lr, batch_size, seconds):
        """Append {step, loss (mean over the window), lr, images_per_second, seconds} and start a new window."""
        elapsed = time.perf_counter() - self.window_start
        record = {
            "step": step,
            "loss": float(self.loss_sum) / self.steps,
            "lr": lr,
            "images_per_second": self.steps * batch_size / elapsed,
            "seconds": seconds,
        }
        self.history.append(record)
        self.loss_sum, self.steps, self.window_start = 0.0, 0, time.perf_counter()
        return record

    def window(self):
        """The open window, for a checkpoint: a resumed run then logs the same losses as an uninterrupted one."""
        return {"loss_sum": float(self.loss_sum), "steps": self.steps}


def _batches(dataset, in_memory, process, config, start_step):
    """(x_0, labels) batches (this process's share, on its device) from start_step on."""
    global_batches = epoch_batches(len(dataset), config.batch_size, config.seed, start_step)
    order = (process.share(indices) for indices in global_batches)
    if in_memory is not None:
        images, labels = in_memory
        return ((images[indices.to(images.device)], labels[indices.to(labels.device)]) for indices in order)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=order, num_workers=config.workers, pin_memory=process.device.type == "cuda"
    )
    return ((x.to(process.device, non_blocking=True), y.to(process.device)) for x, y in loader)


def _check_sizes(config, dataset_size):
    if config.batch_size > dataset_size:
        raise ValueError(f"batch_size ({config.batch_size}) exceeds the data set's size ({dataset_size})")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.batch_size % world_size:
        raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the process count ({world_size})")


def train(config):
    """Train (or resume, or extend) the run that config describes; returns a summary dict.

    Stops when the planned steps are done or, cleanly and with a checkpoint, when ``config.time_budget`` seconds
    have passed; calling it again with the same config continues. A finished run may be trained longer by asking
    for more steps or epochs (the learning rate then follows the longer schedule from where the run stopped); any
    other change of a defining setting is refused, naming the fields that differ. What it writes to the run folder
    (:func:`~diffusion_lib.train_config.run_folder`) is listed in the module's docstring.
    """
    check(config)
    process = Process(config.device)
    device, out = process.device, run_folder(config)
    dataset, in_memory, image_shape, num_classes = _data(config, device)
    steps_per_epoch = len(dataset) // config.batch_size
    total_steps = config.steps or config.epochs * steps_per_epoch
    model, ema, optimizer, schedule = _networks(config, image_shape, num_classes, device)
    step, seconds, log = 0, 0.0, LossLog()
    if (out / "checkpoint.safetensors").exists():
        step, seconds, log = _resume(out / "checkpoint.safetensors", config, total_steps, model, ema, optimizer, device)
    summary = {"out": str(out), "steps": step, "total_steps": total_steps, "device": str(device),
               "image_shape": image_shape, "num_classes": num_classes}  # fmt: skip
    if step == total_steps:
        if process.main:
            print(f"{out} is already complete ({step} steps); nothing to do", flush=True)
        return {**summary, "complete": True, "seconds": seconds, "final_loss": _final_loss(log)}
    _open(out, config, total_steps, process)

    network, batches = _wrapped(model, config, process), _batches(dataset, in_memory, process, config, step)
    quiet = {} if process.main else {"disable": True}  # on the main process, TQDM_DISABLE=1 may still silence it
    progress = tqdm(total=total_steps, initial=step, desc="training", unit="step", **quiet)
    started, stopped_early = time.perf_counter(), False
    model.train()
    while step < total_steps:
        if process.agree(config.time_budget is not None and time.perf_counter() - started > config.time_budget):
            stopped_early = True
            break
        loss = _loss(network, schedule, config, process, next(batches), step, image_shape, num_classes)
        optimisation_step(optimizer, loss, warmup_cosine_learning_rate(config.lr, step, total_steps, config.warmup),
                          config.grad_clip)  # fmt: skip
        ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
        log.add(loss)
        step += 1
        if step % config.log_every == 0 or step == total_steps:
            record = log.record(step, optimizer.param_groups[0]["lr"], config.batch_size,
                                seconds + time.perf_counter() - started)  # fmt: skip
            progress.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_second']:.0f}")
        progress.update(1)
        if process.main and step % config.checkpoint_every == 0:
            _save(out, config, total_steps, model, ema, optimizer, step, seconds + time.perf_counter() - started,
                  log, device)  # fmt: skip
        if process.main and config.sample_every and step % (config.sample_every * steps_per_epoch) == 0:
            _sample_grid(ema, config, image_shape, num_classes, out / f"samples_epoch_{step // steps_per_epoch}.png")
    progress.close()
    seconds += time.perf_counter() - started
    if process.main:
        _finish(out, config, total_steps, model, ema, optimizer, step, seconds, log, device, image_shape, num_classes)
    if process.world_size > 1:
        dist.barrier()
    return {**summary, "steps": step, "complete": not stopped_early, "seconds": seconds,
            "final_loss": _final_loss(log)}  # fmt: skip


def _open(out, config, total_steps, process):
    """Make the run folder and write its settings, readable, to config.json; warn when the warm-up does not end
    before the last step (the learning rate would never reach lr)."""
    out.mkdir(parents=True, exist_ok=True)
    if not process.main:
        return
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    if config.warmup >= total_steps:
        print(f"warning: the warm-up ({config.warmup} steps) does not end before the run does ({total_steps} steps), "
              f"so the learning rate never reaches lr = {config.lr}", file=sys.stderr, flush=True)  # fmt: skip


def _data(config, device):
    """The data set, its tensors on the device when it is held in memory (else None), the image shape and the
    number of classes of a conditional run (else None)."""
    dataset = data.image_dataset(config.dataset, root=config.root, image_size=config.image_size)
    _check_sizes(config, len(dataset))
    num_classes = data.num_classes(dataset) if config.conditional else None
    in_memory = None
    if config.dataset in data.IN_MEMORY:
        in_memory = tuple(tensor.to(device) for tensor in data.as_tensors(dataset))
    return dataset, in_memory, tuple(dataset[0][0].shape), num_classes


def _networks(config, image_shape, num_classes, device):
    """The U-Net (its initial weights from the seed), its EMA copy, AdamW and the noise schedule, on the device."""
    cuda = device.type == "cuda"
    torch.manual_seed(config.seed)  # the initial weights, and the dropout masks from here on
    model = build_unet(config, image_shape, num_classes).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0, fused=cuda or None)
    return model, ema, optimizer, NoiseSchedule.named(config.schedule, T=config.T).to(device)


def _wrapped(model, config, process):
    """The network the steps call: the model, in DistributedDataParallel under torchrun, compiled when asked (by
    default on CUDA)."""
    cuda, network = process.device.type == "cuda", model
    if process.world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=[process.device] if cuda else None)
    if cuda if config.compile is None else config.compile:
        network = torch.compile(network, mode=config.compile_mode)
    return network


def _loss(network, schedule, config, process, batch, step, image_shape, num_classes):
    """The denoising loss of this process's share of the global batch at a step: its (t, eps) and, in a
    conditional run, its dropped labels are functions of (seed, step) (in bfloat16 autocast when asked, by default
    on CUDA)."""
    cuda = process.device.type == "cuda"
    x0, labels = batch
    x0 = x0.contiguous(memory_format=torch.channels_last) if cuda else x0
    t, eps = step_noise(config, step, (config.batch_size, *image_shape), process.device)
    t, eps = process.share(t), process.share(eps)
    if config.conditional:
        dropped = process.share(null_label_mask(config, step, config.batch_size, process.device))
        labels = torch.where(dropped, num_classes, labels)
    else:
        labels = None
    bf16 = cuda if config.bf16 is None else config.bf16
    with torch.autocast(process.device.type, dtype=torch.bfloat16, enabled=bf16):
        return denoising_loss(network, schedule, x0, t, eps, config.prediction, labels)


def _finish(out, config, total_steps, model, ema, optimizer, step, seconds, log, device, image_shape, num_classes):
    """The last checkpoint, the EMA weights with what is needed to sample from them, and the training curve."""
    _save(out, config, total_steps, model, ema, optimizer, step, seconds, log, device)
    meta = {"config": dataclasses.asdict(config), "step": step, "image_shape": list(image_shape),
            "num_classes": num_classes}  # fmt: skip
    checkpoints.save(out / "ema.safetensors", ema.state_dict(), meta)
    (out / "history.json").write_text(json.dumps(log.history, indent=1))


def _final_loss(log):
    return log.history[-1]["loss"] if log.history else None


def _save(out, config, total_steps, model, ema, optimizer, step, seconds, log, device):
    optimizer_tensors, param_groups = checkpoints.optimizer_state(optimizer)
    tensors = {
        **checkpoints.prefixed("model", model.state_dict()),
        **checkpoints.prefixed("ema", ema.state_dict()),
        **checkpoints.prefixed("optimizer", optimizer_tensors),
        **checkpoints.prefixed("rng", checkpoints.rng_states(device)),
    }
    meta = {
        "config": dataclasses.asdict(config),
        "step": step,
        "total_steps": total_steps,
        "seconds": seconds,
        "history": log.history,
        "window": log.window(),
        "param_groups": param_groups,
    }
    checkpoints.save(out / "checkpoint.safetensors", tensors, meta)


def _resume(path, config, total_steps, model, ema, optimizer, device):
    """Load a checkpoint into the run's objects, after checking that it belongs to the same run."""
    tensors, meta = checkpoints.load(path, device)
    saved = TrainConfig(**meta["config"])
    finished = meta["step"] == meta["total_steps"]
    changed = differences(saved, config, ignore=("steps", "epochs") if finished else ())
    if changed:
        raise ValueError(
            f"{path.parent} holds a run with other settings ({'; '.join(changed)}); a finished run can only be "
            "trained longer. Use another --out, or delete the folder"
        )
    if meta["step"] > total_steps:
        done = meta["step"]
        raise ValueError(f"{path.parent} has already trained {done} steps, more than the {total_steps} asked for")
    model.load_state_dict(checkpoints.unprefixed("model", tensors))
    ema.load_state_dict(checkpoints.unprefixed("ema", tensors))
    checkpoints.restore_optimizer(optimizer, checkpoints.unprefixed("optimizer", tensors), meta["param_groups"])
    checkpoints.restore_rng_states(checkpoints.unprefixed("rng", tensors), device)
    return meta["step"], meta["seconds"], LossLog(meta["history"], **meta["window"])


def _sample_grid(ema, config, image_shape, num_classes, path):
    """An 8 x 8 grid drawn by the EMA network in float32 (for a conditional network: each row the digits 0, 1, 2,
    ...)."""
    from torchvision.utils import save_image

    device = next(ema.parameters()).device
    labels = None if num_classes is None else torch.arange(64) % num_classes
    pipeline = Pipeline.from_config(ema, config, image_shape, num_classes)
    images = pipeline.sample(64, steps=config.sample_steps, seed=config.seed, device=device, labels=labels,
                             bfloat16=False)  # fmt: skip
    save_image((images + 1) / 2, path, nrow=8)
