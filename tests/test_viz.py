"""Figures (viz.py): the layout and size of image grids, pixel by pixel, and the axes and artists each figure
function draws, against the data it was given.

Rendering runs on matplotlib's Agg backend; every figure is closed after its test.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.image import AxesImage

from diffusion_lib import NoiseSchedule, viz


@pytest.fixture(autouse=True)
def agg_backend():
    """Draw off screen; close every figure afterwards."""
    plt.switch_backend("Agg")
    yield
    plt.close("all")


def constant_images(values, channels=1, height=3, width=5):
    """Images (n, C, H, W), image k filled with values[k]."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, channels, height, width).clone()


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_places_each_image_in_its_cell_with_white_padding(channels):
    """n = 5 images of 3 x 5 pixels, 3 per row: 2 rows; each cell is 2 pixels of padding and an image."""
    values = [-1.0, -0.5, 0.0, 0.5, 1.0]
    grid = viz.image_grid(constant_images(values, channels), nrow=3)
    assert grid.shape == (2 * (3 + 2) + 2, 3 * (5 + 2) + 2, channels)
    assert grid.dtype == np.float32
    expected = np.ones(grid.shape, dtype=np.float32)  # padding (and the empty sixth cell) is white
    for k, value in enumerate(values):
        row, column = divmod(k, 3)
        top, left = 2 + row * 5, 2 + column * 7
        expected[top : top + 3, left : left + 5] = (value + 1) / 2
    np.testing.assert_array_equal(grid, expected)


def test_image_grid_clamps_to_the_signed_range_and_takes_numpy():
    grid = viz.image_grid(constant_images([-3.0, 2.0]).numpy(), nrow=2)
    assert grid.shape == (3 + 4, 2 * 7 + 2, 1)
    assert grid[2, 2, 0] == 0.0 and grid[2, 9, 0] == 1.0


def test_show_images_draws_the_grid_in_grey_without_axes():
    fig, ax = plt.subplots()
    images = constant_images([-1.0, 0.0, 1.0])
    assert viz.show_images(ax, images, nrow=2, title="three") is ax
    (image,) = ax.get_images()
    np.testing.assert_array_equal(image.get_array(), viz.image_grid(images, 2)[..., 0])
    assert image.get_cmap().name == "gray" and image.get_clim() == (0, 1)
    assert not ax.axison and ax.get_title() == "three"
    fig, ax = plt.subplots()
    viz.show_images(ax, constant_images([0.5], channels=3), nrow=1)
    assert ax.get_images()[0].get_array().shape == (3 + 4, 5 + 4, 3)


def test_scatter_draws_the_points_in_a_square_window():
    fig, ax = plt.subplots()
    points = torch.tensor([[0.0, 1.0], [-0.5, 0.25], [1.0, -1.0]])
    assert viz.scatter(ax, points, title="data", limit=2.0) is ax
    (collection,) = ax.collections
    assert isinstance(collection, PathCollection)
    np.testing.assert_array_equal(collection.get_offsets(), points.numpy())
    assert ax.get_xlim() == (-2.0, 2.0) and ax.get_ylim() == (-2.0, 2.0) and ax.get_title() == "data"


def test_snapshots_draw_one_panel_per_chosen_state():
    trajectory = torch.randn(6, 20, 2, generator=torch.Generator().manual_seed(0))
    fig = viz.snapshots(trajectory, [0, 3, 5], ["T", "mid", "0"])
    assert [ax.get_title() for ax in fig.axes] == ["T", "mid", "0"]
    for ax, index in zip(fig.axes, [0, 3, 5], strict=True):
        np.testing.assert_array_equal(ax.collections[0].get_offsets(), trajectory[index].numpy())


def test_paths_draw_a_line_per_point_and_mark_both_ends():
    fig, ax = plt.subplots()
    trajectory = torch.randn(4, 10, 2, generator=torch.Generator().manual_seed(1))
    data = torch.zeros(5, 2)
    viz.paths(ax, trajectory, num_paths=3, data=data)
    assert len(ax.lines) == 3
    np.testing.assert_array_equal(ax.lines[1].get_xydata(), trajectory[:, 1].numpy())
    data_points, starts, ends = ax.collections
    assert len(data_points.get_offsets()) == 5
    np.testing.assert_array_equal(starts.get_offsets(), trajectory[0, :3].numpy())
    np.testing.assert_array_equal(ends.get_offsets(), trajectory[-1, :3].numpy())
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["$x_T$", "$x_0$"]


def test_schedule_curves_plot_alpha_bar_log_snr_and_beta_against_t_over_T():
    schedules = {"linear": NoiseSchedule.linear(T=50), "cosine": NoiseSchedule.cosine(T=40)}
    fig = viz.schedule_curves(schedules)
    ax_bar, ax_snr, ax_beta = fig.axes
    for ax in fig.axes:
        assert [line.get_label() for line in ax.lines] == ["linear", "cosine"]
    cosine = schedules["cosine"]
    np.testing.assert_allclose(ax_bar.lines[1].get_xdata(), np.arange(40) / 40)
    np.testing.assert_allclose(ax_bar.lines[1].get_ydata(), cosine.alpha_bars.numpy())
    np.testing.assert_allclose(ax_snr.lines[1].get_ydata(), np.log(cosine.snr.numpy()))
    np.testing.assert_allclose(ax_beta.lines[1].get_ydata(), cosine.betas.numpy())
    assert ax_beta.get_yscale() == "log"


@pytest.mark.parametrize("n", [10, 60])
def test_loss_curve_adds_the_running_mean_once_there_are_enough_steps(n):
    fig, ax = plt.subplots()
    losses = [float(k % 7) for k in range(n)]
    viz.loss_curve(ax, losses, window=50, label="mean")
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), losses)
    if n < 50:
        assert len(ax.lines) == 1
        return
    raw, running = ax.lines
    expected = [sum(losses[k - 49 : k + 1]) / 50 for k in range(49, n)]
    np.testing.assert_allclose(running.get_xdata(), np.arange(49, n))
    np.testing.assert_allclose(running.get_ydata(), expected, rtol=1e-12)


def test_image_table_lays_out_rows_and_columns_and_checks_the_cells():
    cells = [[constant_images([0.0]), constant_images([0.5])] for _ in range(3)]
    fig = viz.image_table(cells, ["a", "b", "c"], ["left", "right"])
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes] == ["left", "right", "", "", "", ""]
    assert all(len(ax.get_images()) == 1 for ax in fig.axes)
    assert [t.get_text() for ax in fig.axes[::2] for t in ax.texts] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 entries"):
        viz.image_table([[constant_images([0.0])]], ["a"], ["left", "right"])


def test_normal_histograms_draw_each_sample_beside_the_normal_density():
    samples = {"noise": torch.randn(1000, generator=torch.Generator().manual_seed(2)), "data": torch.zeros(50)}
    fig = viz.normal_histograms(samples, bins=40)
    assert [ax.get_title() for ax in fig.axes] == ["noise", "data"]
    for ax in fig.axes:
        assert len(ax.patches) == 40
        (line,) = ax.lines
        np.testing.assert_allclose(line.get_ydata().max(), 1 / np.sqrt(2 * np.pi), rtol=1e-6)


def test_step_curves_start_at_the_first_step():
    fig, ax = plt.subplots()
    viz.step_curves(ax, {"a": [1.0, 2.0, 4.0], "b": torch.tensor([3.0, 1.0])}, first_step=2)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [2, 3, 4])
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), [3.0, 1.0])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_heatmap_centres_the_colour_scale():
    fig, ax = plt.subplots()
    values = torch.tensor([[1.0, -3.0], [2.0, 0.5]])
    image = viz.heatmap(ax, values, title="h")
    assert isinstance(image, AxesImage) and image.get_clim() == (-3.0, 3.0)
    np.testing.assert_array_equal(image.get_array(), values.numpy())
    assert viz.heatmap(ax, values, symmetric=False).get_clim() == (-3.0, 2.0)


def test_metric_curves_draw_the_floor_band():
    fig, ax = plt.subplots()
    viz.metric_curves(ax, [10, 20, 50], {"ddpm": [3.0, 2.0, 1.5]}, floor=(1.0, 0.2))
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [3.0, 2.0, 1.5])
    assert ax.lines[1].get_ydata()[0] == 1.0  # the floor's mean
    (band,) = ax.patches
    assert band.get_y() == pytest.approx(0.8) and band.get_y() + band.get_height() == pytest.approx(1.2)


def test_filmstrip_puts_each_image_in_a_row_and_each_frame_in_a_column():
    fig, ax = plt.subplots()
    frames = torch.tensor([-1.0, 0.0, 1.0])[:, None, None, None, None].expand(3, 2, 1, 3, 5).clone()
    frames[:, 1] *= 0.5  # the second image: another value in every frame
    viz.filmstrip(ax, frames, labels=["T", "T/2", "0"])
    grid = ax.get_images()[0].get_array()
    assert grid.shape == (2 * 5 + 2, 3 * 7 + 2)
    for image in range(2):
        for frame in range(3):
            top, left = 2 + image * 5, 2 + frame * 7
            value = frames[frame, image, 0, 0, 0].item()
            assert grid[top, left] == pytest.approx((value + 1) / 2)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["T", "T/2", "0"]


def test_training_curves_plot_each_key_against_step():
    history = [{"step": 10, "loss": 1.0, "lr": 0.1}, {"step": 20, "loss": 0.5, "lr": 0.05}]
    fig = viz.training_curves(history, ["loss", "lr"], yscales=["log", "linear"])
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "lr"]
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_xydata(), [[10, 0.1], [20, 0.05]])
    assert fig.axes[0].get_yscale() == "log"


def test_histograms_share_their_bins():
    fig, ax = plt.subplots()
    viz.histograms(ax, {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([2.0, 3.0])}, bins=4)
    assert len(ax.patches) == 8
    edges = sorted({round(p.get_x(), 9) for p in ax.patches})
    assert edges == [0.0, 0.75, 1.5, 2.25]


def test_class_bars_group_the_bars_by_class():
    fig, ax = plt.subplots()
    viz.class_bars(ax, {"real": [0.5, 0.25, 0.25], "generated": torch.tensor([0.2, 0.3, 0.5])})
    real, generated = ax.containers
    assert [bar.get_height() for bar in generated] == pytest.approx([0.2, 0.3, 0.5])
    centres = [bar.get_x() + bar.get_width() / 2 for bar in real]
    assert centres == pytest.approx([-0.2, 0.8, 1.8])
    assert list(ax.get_xticks()) == [0, 1, 2]


def test_the_book_style_maps_the_column_width_to_the_700_pixel_column():
    viz.use_book_style()
    assert viz.COLUMN_WIDTH * plt.rcParams["figure.dpi"] == 700
    assert plt.rcParams["savefig.dpi"] == plt.rcParams["figure.dpi"]
    assert min(plt.rcParams[key] for key in ("font.size", "xtick.labelsize", "legend.fontsize")) >= 8


@pytest.mark.parametrize(
    "draw",
    [
        lambda: viz.snapshots(torch.zeros(8, 5, 2), range(8), [f"{k}" for k in range(8)]),
        lambda: viz.schedule_curves({"linear": NoiseSchedule.linear(10)}),
        lambda: viz.image_table([[constant_images([0.0])] * 9], ["row"], [f"{k}" for k in range(9)]),
        lambda: viz.normal_histograms({f"{k}": torch.randn(50) for k in range(6)}),
        lambda: viz.training_curves([{"step": 1, "a": 1.0, "b": 2.0, "c": 3.0}], ["a", "b", "c"]),
    ],
    ids=["snapshots", "schedule_curves", "image_table", "normal_histograms", "training_curves"],
)
def test_whole_figures_fit_the_column_however_many_panels(draw):
    width, height = draw().get_size_inches()
    assert width <= viz.COLUMN_WIDTH + 1e-9 and height > 0


def test_a_panel_row_keeps_its_size_when_it_fits_and_narrows_when_it_does_not():
    assert viz.panel_row(2, 2.4) == (4.8, 2.4)
    assert viz.panel_row(4, 2.4, height=1.0) == (viz.COLUMN_WIDTH, 1.0)
    assert viz.panel_row(5, 2.4) == pytest.approx((viz.COLUMN_WIDTH, viz.COLUMN_WIDTH / 5))
