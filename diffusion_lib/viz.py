"""Figures: point clouds, reverse trajectories, image grids and schedule curves.

Every figure is drawn for the book's text column, 700 pixels wide: at 100 dots per inch that is
``COLUMN_WIDTH`` = 7 inches, so a figure no wider is shown at its own size, and its 8- and 9-point
labels stay legible. ``use_book_style`` sets this up; the functions that make whole figures narrow
their panels so that a row of them fits the column.
"""

import matplotlib.pyplot as plt
import torch

COLUMN_WIDTH = 7.0
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
}


def use_book_style():
    """Draw the figures that follow at the book's resolution and type sizes (STYLE)."""
    plt.rcParams.update(STYLE)


def panel_row(count, size, height=None):
    """The figsize of a row of `count` panels of width `size` (and the given height, else square), narrowed so
    that the row fits the column."""
    width = min(size, COLUMN_WIDTH / count)
    return width * count, height if height is not None else width


def scatter(ax, points, title=None, limit=1.25, **style):
    """Draw a 2-D point cloud (n, 2) on ax with equal axes in [-limit, limit]^2."""
    points = torch.as_tensor(points).detach().cpu()
    ax.scatter(points[:, 0], points[:, 1], **{"s": 2, "alpha": 0.5, **style})
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", xticks=[], yticks=[])
    if title:
        ax.set_title(title)
    return ax


def snapshots(trajectory, indices, labels, limit=1.25, size=2.4):
    """One scatter panel per chosen state of a trajectory (steps, n, 2); returns the figure."""
    fig, axes = plt.subplots(1, len(indices), figsize=panel_row(len(indices), size), squeeze=False)
    for ax, index, label in zip(axes[0], indices, labels, strict=True):
        scatter(ax, trajectory[index], title=label, limit=limit)
    fig.tight_layout()
    return fig


def paths(ax, trajectory, num_paths=30, limit=1.25, data=None, start_label="$x_T$"):
    """Draw the paths of the first num_paths points of a trajectory (steps, n, 2), start marked o and x_0 marked x."""
    trajectory = torch.as_tensor(trajectory).detach().cpu()[:, :num_paths]
    if data is not None:
        scatter(ax, data, limit=limit, color="0.8")
    for k in range(trajectory.shape[1]):
        ax.plot(trajectory[:, k, 0], trajectory[:, k, 1], lw=0.7, alpha=0.7)
    ax.scatter(trajectory[0, :, 0], trajectory[0, :, 1], s=12, marker="o", color="k", label=start_label)
    ax.scatter(trajectory[-1, :, 0], trajectory[-1, :, 1], s=20, marker="x", color="C3", label="$x_0$")
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", xticks=[], yticks=[])
    ax.legend(loc="upper right", fontsize=8)
    return ax


def image_grid(images, nrow):
    """Tile images (n, C, H, W) in [-1, 1] into one (H', W', C) array in [0, 1], nrow images per row."""
    images = torch.as_tensor(images).detach().cpu().float().clamp(-1, 1)
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    grid = torch.ones(c, rows * (h + 2) + 2, nrow * (w + 2) + 2)
    for k, image in enumerate(images):
        r, q = divmod(k, nrow)
        grid[:, 2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = (image + 1) / 2
    return grid.permute(1, 2, 0).numpy()


def show_images(ax, images, nrow, title=None):
    """Draw an image grid (see :func:`image_grid`) on ax, in grey for one channel."""
    grid = image_grid(images, nrow)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def schedule_curves(schedules, size=(COLUMN_WIDTH, 2.6)):
    """alpha_bar_t, log SNR and beta_t against t/T for a dict {name: NoiseSchedule}; returns the figure."""
    fig, (ax_bar, ax_snr, ax_beta) = plt.subplots(1, 3, figsize=size)
    for name, schedule in schedules.items():
        fraction = torch.arange(schedule.T) / schedule.T
        ax_bar.plot(fraction, schedule.alpha_bars, label=name)
        ax_snr.plot(fraction, schedule.snr.log(), label=name)
        ax_beta.plot(fraction, schedule.betas, label=name)
    ax_bar.set(xlabel="t / T", title=r"$\bar\alpha_t$")
    ax_snr.set(xlabel="t / T", title=r"$\log \mathrm{SNR}(t)$")
    ax_beta.set(xlabel="t / T", title=r"$\beta_t$", yscale="log")
    ax_bar.legend()
    fig.tight_layout()
    return fig


def loss_curve(ax, losses, window=50, label=None):
    """Plot a loss history with its running mean over `window` steps."""
    losses = torch.as_tensor(losses, dtype=torch.float64)
    ax.plot(losses, color="0.8", lw=0.5)
    if len(losses) >= window:
        running = losses.unfold(0, window, 1).mean(1)
        ax.plot(torch.arange(window - 1, len(losses)), running, label=label)
    ax.set(xlabel="step", ylabel="loss")
    return ax


def image_table(cells, row_labels, column_labels, nrow=1, size=1.4):
    """A table of image grids: cells[i][j] (n, C, H, W) in [-1, 1] drawn in row i, column j; returns the figure."""
    if len(cells) != len(row_labels) or any(len(row) != len(column_labels) for row in cells):
        raise ValueError(
            f"cells must be {len(row_labels)} rows (one per row label) of {len(column_labels)} entries "
            f"(one per column label), got rows of lengths {[len(row) for row in cells]}"
        )
    width, _ = panel_row(len(column_labels), size)
    height = width / len(column_labels) * len(cells)
    fig, axes = plt.subplots(len(cells), len(column_labels), figsize=(width, height))
    axes = axes.reshape(len(cells), len(column_labels))
    for i, (row, row_label) in enumerate(zip(cells, row_labels, strict=True)):
        for j, (ax, images) in enumerate(zip(axes[i], row, strict=True)):
            show_images(ax, images, nrow, title=column_labels[j] if i == 0 else None)
        axes[i, 0].text(-0.06, 0.5, row_label, transform=axes[i, 0].transAxes, rotation=90, ha="right", va="center")
    fig.tight_layout()
    return fig


def normal_histograms(samples, bins=80, limit=4.0, size=2.4):
    """Density histograms of the values in a dict {label: tensor}, one panel each, beside the N(0, 1) density.

    Each panel has its own vertical scale, so that a tall spike does not flatten the other panels.
    """
    fig, axes = plt.subplots(1, len(samples), figsize=panel_row(len(samples), size), squeeze=False)
    grid = torch.linspace(-limit, limit, 401)
    normal_density = torch.exp(-(grid**2) / 2) / (2 * torch.pi) ** 0.5
    for ax, (label, values) in zip(axes[0], samples.items(), strict=True):
        values = torch.as_tensor(values).detach().cpu().flatten().float()
        ax.hist(values, bins=bins, range=(-limit, limit), density=True, color="C0", alpha=0.6)
        ax.plot(grid, normal_density, color="k", ls="--", lw=1, label=r"$\mathcal{N}(0, 1)$")
        ax.set(title=label, xlim=(-limit, limit), xticks=[-3, 0, 3], yticks=[])
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def step_curves(ax, curves, first_step=1, ylabel=None, yscale="log", xscale="log"):
    """Plot per-step quantities {label: values (n,)} against the text's step t = first_step, ..., first_step + n - 1."""
    for label, values in curves.items():
        values = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
        ax.plot(torch.arange(first_step, first_step + len(values)), values, label=label)
    ax.set(xlabel="step $t$", ylabel=ylabel, yscale=yscale, xscale=xscale)
    ax.legend()
    return ax


def heatmap(ax, values, extent=None, title=None, xlabel=None, ylabel=None, cmap="RdBu_r", symmetric=True):
    """Draw a matrix (rows, columns) as an image, row 0 at the bottom; returns the image (for a colorbar).

    extent = (left, right, bottom, top) labels the axes; symmetric centres the colour scale at 0.
    """
    values = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    limit = values.abs().max().item() if symmetric else None
    vmin = -limit if symmetric else None
    image = ax.imshow(values, origin="lower", aspect="auto", extent=extent, cmap=cmap, vmin=vmin, vmax=limit)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return image


def metric_curves(ax, settings, curves, floor=None, xlabel=None, ylabel=None, xscale="log", yscale="log"):
    """Plot distances {label: values} against settings (e.g. numbers of steps), beside a band for the floor.

    floor = (mean, std) of the same distance between two fresh draws of the data; it is drawn as a grey band.
    """
    for label, values in curves.items():
        ax.plot(settings, values, marker="o", label=label)
    if floor is not None:
        mean, std = floor
        ax.axhspan(mean - std, mean + std, color="0.85", label="data vs data")
        ax.axhline(mean, color="0.5", lw=0.8)
    ax.set(xlabel=xlabel, ylabel=ylabel, xscale=xscale, yscale=yscale)
    ax.legend(fontsize=8)
    return ax


def filmstrip(ax, frames, labels=None, title=None):
    """Draw frames (F, n, C, H, W) in [-1, 1] of n images as one grid, a row per image and a column per frame.

    labels (F strings, e.g. the steps of a reverse process) are written under the columns.
    """
    frames = torch.as_tensor(frames).detach().cpu().float()
    num_frames, n, c, h, w = frames.shape
    show_images(ax, frames.transpose(0, 1).reshape(n * num_frames, c, h, w), nrow=num_frames, title=title)
    if labels is not None:
        ax.set_axis_on()
        ax.set_xticks([2 + j * (w + 2) + (w - 1) / 2 for j in range(num_frames)], labels)
        ax.set_yticks([])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    return ax


def training_curves(history, keys, ylabels=None, yscales=None, size=(3.4, 2.8)):
    """One panel per key of a training history (records {"step": ..., key: value}) against step; returns the figure."""
    fig, axes = plt.subplots(1, len(keys), figsize=panel_row(len(keys), *size), squeeze=False)
    steps = [record["step"] for record in history]
    for i, (ax, key) in enumerate(zip(axes[0], keys, strict=True)):
        ax.plot(steps, [record[key] for record in history], marker=".", ms=3, lw=1)
        ax.set(xlabel="step", ylabel=ylabels[i] if ylabels else key, yscale=yscales[i] if yscales else "linear")
    fig.tight_layout()
    return fig


def histograms(ax, values, bins=50, xlabel=None):
    """Overlaid density histograms of the values in a dict {label: tensor}, on common bins."""
    values = {label: torch.as_tensor(v).detach().cpu().flatten().double() for label, v in values.items()}
    low = min(v.min().item() for v in values.values())
    high = max(v.max().item() for v in values.values())
    for label, v in values.items():
        ax.hist(v, bins=bins, range=(low, high), density=True, alpha=0.5, label=label)
    ax.set(xlabel=xlabel, ylabel="density")
    ax.legend()
    return ax


def class_bars(ax, fractions, xlabel="class", ylabel="fraction"):
    """Grouped bars of per-class values, a dict {label: values (k,)}: one group of bars per class 0, ..., k-1."""
    width = 0.8 / len(fractions)
    for j, (label, values) in enumerate(fractions.items()):
        values = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
        positions = torch.arange(len(values)) + (j - (len(fractions) - 1) / 2) * width
        ax.bar(positions.numpy(), values.numpy(), width, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, xticks=list(range(len(values))))
    ax.legend(fontsize=8)
    return ax
