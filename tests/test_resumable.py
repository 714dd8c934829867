"""Work in saved pieces under a time budget (resumable.py): a build stopped by its budget and called again ends with
exactly what an uninterrupted build makes; a lost piece is drawn again, the same; the budget is read from a clock."""

import pytest
import torch

from diffusion_lib import data, resumable
from diffusion_lib.resumable import TimeBudget, draw_in_chunks, seeded_generator


class Clock:
    """A perf_counter that moves only when told: each call returns the time, then advances by ``tick``."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock(tick=1.0)
    monkeypatch.setattr(resumable.time, "perf_counter", fake)
    return fake


def test_a_time_budget_is_spent_once_its_seconds_have_passed(clock):
    budget = TimeBudget(2.5)  # started at 1
    assert not budget.spent()  # 2: one second gone
    assert budget.left() == pytest.approx(0.5)  # 3: two gone
    assert budget.spent()  # 4: three gone
    assert budget.left() == 0.0  # never negative
    unlimited = TimeBudget(None)
    clock.now += 1e9
    assert not unlimited.spent() and unlimited.left() is None


def test_a_seeded_generator_is_the_stream_of_its_seed_and_index():
    expected = torch.randn(5, generator=torch.Generator().manual_seed(7 * 1_000_003 + 3))
    torch.testing.assert_close(torch.randn(5, generator=seeded_generator(7, 3)), expected, rtol=0, atol=0)
    assert not torch.equal(torch.randn(5, generator=seeded_generator(7, 4)), expected)


def drawer(calls):
    """draw(row, chunk): images in [-1, 1] from the piece's own stream, a different law per row; counts its calls."""

    def draw(row, chunk):
        calls.append((row, chunk))
        scale = {"narrow": 0.3, "wide": 0.9}[row]
        return (scale * torch.randn(2, 1, 3, 3, generator=seeded_generator(11, chunk))).clamp(-1, 1)

    return draw


def test_pieces_are_drawn_once_in_order_and_stored_as_eight_bit_pixels(tmp_path):
    calls = []
    drawn = draw_in_chunks(tmp_path, ["narrow", "wide"], 3, drawer(calls))
    assert calls == [("narrow", 0), ("wide", 0), ("narrow", 1), ("wide", 1), ("narrow", 2), ("wide", 2)]
    stored = sorted(f"{row}_{chunk}.safetensors" for row, chunk in calls)
    assert sorted(path.name for path in tmp_path.iterdir()) == stored
    images, seconds = drawn["narrow"]
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 3, 3) and seconds >= 0
    expected = torch.cat([drawer([])("narrow", chunk) for chunk in range(3)])
    torch.testing.assert_close(images, data.to_bytes(expected), rtol=0, atol=0)
    assert draw_in_chunks(tmp_path, ["narrow", "wide"], 3, drawer(calls)).keys() == {"narrow", "wide"}
    assert len(calls) == 6  # all stored: nothing drawn again


def test_a_build_stopped_by_its_budget_resumes_to_what_an_uninterrupted_one_makes(tmp_path, clock):
    whole = draw_in_chunks(tmp_path / "whole", ["narrow", "wide"], 3, drawer([]))
    stopped, calls = tmp_path / "stopped", []
    stopped.mkdir()
    # each clock reading is one second: the budget lets two pieces through, then stops
    assert draw_in_chunks(stopped, ["narrow", "wide"], 3, drawer(calls), time_budget=4.5) is None
    assert calls == [("narrow", 0), ("wide", 0)]
    resumed = draw_in_chunks(stopped, ["narrow", "wide"], 3, drawer(calls))
    assert calls[2:] == [("narrow", 1), ("wide", 1), ("narrow", 2), ("wide", 2)]
    (stopped / "wide_1.safetensors").unlink()  # a lost piece is drawn again, the same
    again = draw_in_chunks(stopped, ["narrow", "wide"], 3, drawer(calls))
    assert calls[-1] == ("wide", 1)
    for row in ("narrow", "wide"):
        for result in (resumed, again):
            torch.testing.assert_close(result[row][0], whole[row][0], rtol=0, atol=0)
