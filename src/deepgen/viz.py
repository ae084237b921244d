"""Pictures of data: image grids (Pillow) and 2-D scatter plots (matplotlib, Agg).

Every writer goes through :func:`atomic_path`, so a crash never leaves half a PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.dataset import DataSpec
from .io import atomic_path


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, upscale: int = 0) -> np.ndarray:
    """(N, C, H, W) values in [0, 1] -> (rows*(H+pad)+pad, cols*(W+pad)+pad[, 3]) uint8 grid.

    ``upscale`` > 0 repeats pixels so small images (8x8 digits) stay visible; 0 picks a
    factor that makes each tile at least 28 pixels high.
    """
    x = torch.nan_to_num(images.detach().float().cpu(), nan=0.0).clamp(0, 1)
    n, c, h, w = x.shape
    if upscale <= 0:
        upscale = max(1, math.ceil(28 / h))
    if upscale > 1:
        x = x.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
        h, w = h * upscale, w * upscale
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad) * 0.5
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    arr = (grid.numpy() * 255).round().astype(np.uint8)
    return arr[0] if c == 1 else arr.transpose(1, 2, 0)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write (N, C, H, W) images in [0, 1] as one PNG grid."""
    with atomic_path(path) as tmp:
        Image.fromarray(image_grid(images, nrow)).save(tmp, format="PNG")
    return Path(path)


def save_scatter(
    points: torch.Tensor,
    path: str | Path,
    labels: torch.Tensor | None = None,
    reference: Sequence[Sequence[float]] | None = None,
    title: str = "",
) -> Path:
    """Scatter (N, 2) points, coloured by ``labels`` (N,) if given; ``reference`` (M, 2)
    points (the true modes of a toy) are drawn as red crosses on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = points.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if labels is None:
        ax.scatter(p[:, 0], p[:, 1], s=4, alpha=0.7)
    else:
        c = labels.detach().cpu().numpy()
        cmap = plt.get_cmap("tab10" if c.max() < 10 else "tab20")
        # One colour per class and a legend, not a continuous colour bar.
        for k in np.unique(c):
            ax.scatter(p[c == k, 0], p[c == k, 1], s=4, alpha=0.7, color=cmap(int(k) % cmap.N), label=str(int(k)))
        if len(np.unique(c)) <= 20:
            ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    if reference is not None and len(reference):
        ref = np.asarray(reference, dtype=float)
        ax.scatter(ref[:, 0], ref[:, 1], marker="x", c="red", s=40)
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def save_samples(samples: torch.Tensor, spec: DataSpec, path: str | Path, reference: Sequence[Sequence[float]] | None = None) -> bool:
    """Save samples (N, *spec.shape) as the picture that fits the data: a grid for images,
    a scatter for 2-D points. Returns False (writes nothing) for other data."""
    if spec.is_image:
        x = samples.float()
        if spec.kind == "discrete" and spec.num_levels:
            x = x / (spec.num_levels - 1)
        save_image_grid(x, path)
        return True
    if spec.shape == (2,):
        save_scatter(samples, path, reference=reference, title=f"{len(samples)} samples")
        return True
    return False


def save_histograms(values: dict[str, torch.Tensor], path: str | Path, bins: int = 60, title: str = "") -> Path:
    """One histogram panel per entry (e.g. each critic layer's weights)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(values))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.6), dpi=100, squeeze=False)
    for ax, (name, v) in zip(axes[0], values.items()):
        ax.hist(v.detach().float().cpu().reshape(-1).numpy(), bins=bins, color="tab:blue")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def save_density(
    log_density: torch.Tensor,
    extent: tuple[float, float, float, float],
    data: torch.Tensor,
    samples: torch.Tensor,
    path: str | Path,
    title: str = "",
) -> Path:
    """Two panels: the data (N, 2) as points, and a model's log density on a (G, G) grid
    over ``extent`` = (x0, x1, y0, y1) (rows along y) as a heat map, clipped to the 8 nats
    below its maximum (a peaked density would show its top alone), with ``samples`` (M, 2)
    drawn over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logd = log_density.detach().double().cpu()
    top = float(logd[torch.isfinite(logd)].max()) if bool(torch.isfinite(logd).any()) else 0.0
    dens = logd.nan_to_num(nan=top - 8, neginf=top - 8).clamp(top - 8, top).numpy()
    d, s = data.detach().float().cpu().numpy(), samples.detach().float().cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), dpi=100)
    axes[0].scatter(d[:, 0], d[:, 1], s=3, alpha=0.6)
    axes[0].set_title(f"{len(d)} test points")
    axes[1].imshow(dens, origin="lower", extent=extent, cmap="viridis", aspect="auto")
    axes[1].scatter(s[:, 0], s[:, 1], s=2, c="white", alpha=0.5)
    axes[1].set_title(title or "model log density (8 nats shown), samples in white")
    for ax in axes:
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(path)
