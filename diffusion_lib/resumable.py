"""Long work in saved pieces under a time budget: a build stops cleanly when its time is spent and, called again,
continues where it stopped and ends with what an uninterrupted build would have made."""

import time

import torch

from . import checkpoints, data


class TimeBudget:
    """A number of seconds from now (None: no limit)."""

    def __init__(self, seconds):
        self.seconds, self.started = seconds, time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.started

    def spent(self):
        return self.seconds is not None and self.elapsed() > self.seconds

    def left(self):
        """The seconds left (never negative), or None for no limit."""
        return None if self.seconds is None else max(0.0, self.seconds - self.elapsed())


def seeded_generator(seed, index, device="cpu"):
    """The random stream number ``index`` of a seeded build (its chunk, its piece), seeded with
    seed * 1_000_003 + index: each piece draws a stream of its own, so a piece drawn again after a stop draws what it
    drew the first time, whatever was drawn before it."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + index)


def draw_in_chunks(run, rows, num_chunks, draw, time_budget=None):
    """Images drawn chunk by chunk and row by row, each piece saved, so that drawing can stop and resume.

    For each chunk and, within it, each row name: ``draw(row, chunk)`` returns images in [-1, 1], stored as 8-bit
    pixels in run/{row}_{chunk}.safetensors with the seconds they took; a piece already stored is not drawn again.
    Returns {row: (the uint8 images of every chunk, in order; their seconds in all)}, or None when the time budget
    (seconds) ran out first: what was drawn stays for the next call.
    """
    budget = TimeBudget(time_budget)
    for chunk in range(num_chunks):
        for row in rows:
            file = run / f"{row}_{chunk}.safetensors"
            if file.exists():
                continue
            if budget.spent():
                return None
            started = time.perf_counter()
            pixels = data.to_bytes(draw(row, chunk)).cpu()  # waits for the device, so the time is the drawing's
            seconds = time.perf_counter() - started
            checkpoints.save(file, {"samples": pixels}, {"seconds": seconds})
            print(f"{row} chunk {chunk + 1}/{num_chunks}: {seconds:.1f} s", flush=True)
    drawn = {}
    for row in rows:
        pieces = [checkpoints.load(run / f"{row}_{chunk}.safetensors") for chunk in range(num_chunks)]
        seconds = sum(meta["seconds"] for _, meta in pieces)
        drawn[row] = torch.cat([tensors["samples"] for tensors, _ in pieces]), seconds
    return drawn
