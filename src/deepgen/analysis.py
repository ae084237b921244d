"""Pictures that show what a trained model learned, written into its run folder.

:func:`write_analysis` writes each picture only when the model has the capability it
needs, detected with ``isinstance`` on the Protocols of :mod:`deepgen.models.base`
(never by the model's name):

=====================  =================  ===============================================
file                   needs              shows
=====================  =================  ===============================================
``reconstructions.png`` ``reconstruct``   test inputs (top row) above their reconstructions
``samples.png``         ``sample``        a grid of samples, or a 2-D scatter with the
                                          dataset's true modes as red crosses (a model
                                          whose ``sample`` raises NotImplementedError gets
                                          none, nor the rows of samples below)
``latent.png``          ``encode``        test codes coloured by label (PCA to 2-D when
                                          the latent has more than 2 dimensions)
``manifold.png``        ``decode``, 2-D   a 15x15 grid of decoded codes spanning the codes'
                                          5%..95% quantiles (for a VAE, close to the
                                          standard-normal prior's quantiles)
``interpolation.png``   ``interpolate``   decoded paths between pairs of test examples
``completions.png``     ``complete``      test images (top row) above their lower halves
                                          drawn given the upper halves
``density.png``         ``log_prob``      2-D points: an exact density as a heat map beside
                        (exact), 2-D      the test points, samples drawn over it
``temperatures.png``    a ``temperature`` images: rows of samples at temperatures 0.5 .. 1
                        setting, images
``samplers.png``        a ``sampler``     images: rows of samples by DDIM (10, 50 steps),
                        setting, images   DPM-Solver++ (10, 20) and DDIM eta = 1 (50), all
                                          from the same noise
``guidance.png``        a ``guidance``    images: rows at guidance scales 0, 1, 2, 4,
                        setting, labels   labels 0..7 along each row
``samples.txt``         token data with   samples decoded with the dataset's vocabulary
                        a vocabulary      (character-level text)
=====================  =================  ===============================================

Everything runs under ``torch.no_grad()`` with the model in eval mode (its mode is
restored afterwards), on at most :data:`MAX_EXAMPLES` test examples, with explicit
generators seeded from ``seed``, so the pictures of a run are the same every time.

Conditional models (``model.num_classes`` set) get labels: the test labels when encoding,
labels ``0..K-1`` in turn when sampling, and label 0 for the manifold, always as the
``cond=`` keyword of the capability methods (``encode(x, cond=y)``, ``decode(z, cond=y)``,
``reconstruct(x, cond=y)``, ``interpolate(x1, x2, steps, cond=y)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .data.dataset import Dataset, DataSpec
from .data.resident import iterate
from .data.text import decode_text
from .errors import UserError
from .io import atomic_path
from .models.base import (
    Completion,
    Decoder,
    Encoder,
    GenerativeModel,
    Interpolator,
    LogProb,
    Reconstructor,
)
from .viz import save_density, save_image_grid, save_samples, save_scatter

MAX_EXAMPLES = 2000  # test examples used for codes and quantiles
RECON_COLUMNS = 10  # inputs shown in reconstructions.png
MANIFOLD_SIDE = 15  # manifold.png is a MANIFOLD_SIDE x MANIFOLD_SIDE grid
INTERP_ROWS = 4  # pairs shown in interpolation.png
INTERP_STEPS = 10  # decoded points per pair (endpoints included)
SAMPLES = 64  # images in samples.png (2-D data: 20x as many points)
TEXT_SAMPLES = 4  # token models: sequences decoded into samples.txt
DENSITY_GRID = 200  # density.png: the density on a DENSITY_GRID x DENSITY_GRID grid
TEMPERATURES = (0.5, 0.7, 0.85, 1.0)  # temperatures.png: one row of samples per sampling temperature
# samplers.png: one row per diffusion sampler and step count (DDIM paper, Table 1's spirit).
SAMPLER_ROWS = tuple(
    {"sampler": name, "steps": steps, "eta": eta, "spacing": "auto"}  # each sampler's own spacing, whatever the run's
    for name, steps, eta in (("ddim", 10, 0.0), ("ddim", 50, 0.0), ("dpm-solver++", 10, 0.0), ("dpm-solver++", 20, 0.0), ("ddim", 50, 1.0))
)
GUIDANCE = (0.0, 1.0, 2.0, 4.0)  # guidance.png: one row per classifier-free guidance scale, labels 0..7


def _accepts(model: GenerativeModel, settings: dict[str, Any]) -> bool:
    """Whether ``model``'s config takes ``settings`` (e.g. no 50-step row for a 20-step process)."""
    try:
        model.config.replace(**settings)
    except UserError:  # a bad value, or a field the config does not have
        return False
    return True


def _rows_of_samples(model: GenerativeModel, settings: list[dict[str, Any]], device: torch.device, seed: int) -> torch.Tensor:
    """8 samples per entry of ``settings`` (config overrides), each row from the same seed
    (and labels 0..7 for conditional models): (8 * len(settings), *shape)."""
    config = model.config
    rows = []
    try:
        for over in settings:
            model.config = config.replace(**over)
            row_cond = torch.arange(8, device=device) % model.num_classes if model.num_classes else None
            rows.append(model.sample(8, generator=torch.Generator(device).manual_seed(seed + 99), cond=row_cond))
    finally:
        model.config = config
    return torch.cat(rows).reshape(-1, *model.spec.shape)


def to_unit(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Model-space images (N, C, H, W) -> [0, 1] for a picture (discrete levels are rescaled)."""
    x = x.float()
    if spec.kind == "discrete" and spec.num_levels:
        x = x / (spec.num_levels - 1)
    return x


def _with_labels(fn: Any, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``fn(x)``, or ``fn(x, cond=y)`` for a conditional model (``y`` not None)."""
    return fn(x) if y is None else fn(x, cond=y)


def test_examples(dataset: Dataset, device: torch.device | str, seed: int = 0, limit: int = MAX_EXAMPLES) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``limit`` test examples in model space, (N, *shape), and labels (N,) or None."""
    gen = torch.Generator(torch.device(device)).manual_seed(seed)
    xs, ys = [], []
    for batch in iterate(dataset, "test", batch_size=500, device=device, generator=gen, limit=limit):
        xs.append(batch.x)
        if batch.y is not None:
            ys.append(batch.y)
    if not xs:
        return torch.empty(0, *dataset.spec.shape, device=device), None
    return torch.cat(xs), (torch.cat(ys) if ys else None)


def project_2d(codes: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Codes (N, L) -> (N, 2) points and a note for the title.

    L = 2: the codes themselves. L = 1: the code against zero. L > 2: the first two
    principal components (PCA through an SVD of the centred codes).
    """
    codes = codes.float()
    dim = codes.shape[1]
    if dim == 2:
        return codes, "2-D latent"
    if dim == 1:
        return torch.cat([codes, torch.zeros_like(codes)], dim=1), "1-D latent"
    centred = codes - codes.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(N, L), L)
    points = centred @ vh[:2].T  # (N, min(N, L, 2)): a single code has one component
    if points.shape[1] < 2:
        points = torch.cat([points, points.new_zeros(len(points), 2 - points.shape[1])], dim=1)
    return points, f"PCA of the {dim}-D latent to 2-D"


def latent_grid(codes: torch.Tensor | None, side: int = MANIFOLD_SIDE, device: Any = "cpu") -> torch.Tensor:
    """A (side*side, 2) grid of codes spanning the 5%..95% quantiles of ``codes`` (N, 2).

    Without codes, the standard normal's quantiles (+-1.645). Rows go from high to low
    second coordinate (top of the picture = large z2), columns from low to high z1.
    """
    if codes is not None and len(codes) >= 2:
        q = torch.quantile(codes.float(), torch.tensor([0.05, 0.95], device=codes.device), dim=0)  # (2, 2)
        lo, hi = q[0].to(device), q[1].to(device)
    else:
        lo = torch.full((2,), -1.6449, device=device)
        hi = torch.full((2,), 1.6449, device=device)
    z1 = torch.linspace(0.0, 1.0, side, device=device) * (hi[0] - lo[0]) + lo[0]
    z2 = torch.linspace(1.0, 0.0, side, device=device) * (hi[1] - lo[1]) + lo[1]
    g2, g1 = torch.meshgrid(z2, z1, indexing="ij")  # (side, side) each, row-major
    return torch.stack([g1.reshape(-1), g2.reshape(-1)], dim=1)


def _pairs(y: torch.Tensor | None, n: int, rows: int, same_label: bool) -> list[tuple[int, int]]:
    """Index pairs into the test set: labels differ (or agree, for conditional models)."""
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for i in range(n):
        if len(pairs) == rows:
            break
        if i in used:
            continue
        for j in range(i + 1, n):
            if j in used:
                continue
            if y is None or (bool(y[i] == y[j]) == same_label):
                pairs.append((i, j))
                used.update((i, j))
                break
    return pairs


def write_analysis(
    run_dir: str | Path,
    model: GenerativeModel,
    dataset: Dataset,
    *,
    device: torch.device | str,
    seed: int = 0,
) -> list[Path]:
    """Write the analysis pictures the model supports into ``run_dir``; return their paths.

    ``model`` must already be on ``device``. See the module docstring for the files.
    """
    run_dir = Path(run_dir)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _write(run_dir, model, dataset, device, seed)
    finally:
        model.train(was_training)


def _write(run_dir: Path, model: GenerativeModel, dataset: Dataset, device: torch.device, seed: int) -> list[Path]:
    spec = dataset.spec
    written: list[Path] = []
    cond = model.num_classes is not None
    x, y = test_examples(dataset, device, seed)
    labels = y if cond else None  # what conditional capability methods receive
    have_test = len(x) > 0

    # reconstructions.png: inputs above reconstructions (images only).
    if isinstance(model, Reconstructor) and spec.is_image and have_test:
        k = min(RECON_COLUMNS, len(x))
        lab = None if labels is None else labels[:k]
        recon = _with_labels(model.reconstruct, x[:k], lab)  # (k, C, H, W)
        path = run_dir / "reconstructions.png"
        save_image_grid(to_unit(torch.cat([x[:k], recon.reshape(x[:k].shape)]), spec), path, nrow=k)
        written.append(path)

    # samples.png: every model samples (token data: samples.txt below instead).
    n = SAMPLES * (20 if spec.shape == (2,) else 1) if spec.kind != "tokens" else TEXT_SAMPLES
    gen = torch.Generator(device).manual_seed(seed + 12345)
    sample_cond = torch.arange(n, device=device) % model.num_classes if model.num_classes else None
    try:
        samples = model.sample(n, generator=gen, cond=sample_cond, mean=spec.is_image)
    except NotImplementedError:  # a model without a sampler: the pictures that need none are still written
        samples = None
    path = run_dir / "samples.png"
    if samples is not None and save_samples(samples, spec, path, reference=dataset.meta.get("modes")):
        written.append(path)
    vocab = dataset.meta.get("vocab")
    if samples is not None and spec.kind == "tokens" and isinstance(vocab, str):
        path = run_dir / "samples.txt"
        text = "\n\n".join(f"--- sample {i + 1} ---\n" + decode_text(s, vocab) for i, s in enumerate(samples))
        with atomic_path(path) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        written.append(path)

    # density.png: an exact density of 2-D points as a heat map beside the data, samples over it.
    if isinstance(model, LogProb) and spec.shape == (2,) and spec.kind == "real" and have_test and model.likelihood_info().kind == "exact":
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        pad = 0.15 * (hi - lo).clamp_min(1e-3)
        lo, hi = (lo - pad).tolist(), (hi + pad).tolist()
        gx = torch.linspace(lo[0], hi[0], DENSITY_GRID, device=device)
        gy = torch.linspace(lo[1], hi[1], DENSITY_GRID, device=device)
        yy, xx = torch.meshgrid(gy, gx, indexing="ij")  # rows along y
        points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).to(x.dtype)
        lab = torch.zeros(len(points), dtype=torch.long, device=device) if cond else None
        logp = torch.cat([_with_labels(model.log_prob, points[i : i + 10000], None if lab is None else lab[i : i + 10000]) for i in range(0, len(points), 10000)])
        path = run_dir / "density.png"
        title = "model log density" + (" of class 0" if cond else "") + " (8 nats shown)" + (", samples in white" if samples is not None else "")
        overlay = samples[: 20 * SAMPLES] if samples is not None else x[:0]
        save_density(logp.reshape(DENSITY_GRID, DENSITY_GRID), (lo[0], hi[0], lo[1], hi[1]), x, overlay, path, title)
        written.append(path)

    # Rows of samples under a few sampling settings, from the same seed (images): the
    # temperature of flows and autoregressive models; a diffusion model's samplers and
    # step counts (the same starting noise in every row), and its guidance scales.
    if spec.is_image and samples is not None:
        for name, field, settings in (
            ("temperatures.png", "temperature", [{"temperature": t} for t in TEMPERATURES]),
            ("samplers.png", "sampler", [s for s in SAMPLER_ROWS if _accepts(model, s)]),
            ("guidance.png", "guidance", [{"guidance": g} for g in GUIDANCE] if model.num_classes else []),
        ):
            if hasattr(model.config, field) and settings:
                try:
                    rows = _rows_of_samples(model, settings, device, seed)
                except UserError:  # a knob this model refuses for its output (a PixelCNN's logistic mixture has no temperature)
                    continue
                path = run_dir / name
                save_image_grid(to_unit(rows, spec), path, nrow=8)
                written.append(path)

    # completions.png: test images (top) and their lower halves drawn given the upper halves.
    if isinstance(model, Completion) and spec.is_image and have_test:
        k = min(RECON_COLUMNS, len(x))
        known = torch.zeros(spec.shape, dtype=torch.bool, device=device)
        known[:, : spec.shape[1] // 2] = True  # the upper half of every channel
        lab = None if labels is None else labels[:k]
        done = model.complete(x[:k], known, generator=torch.Generator(device).manual_seed(seed + 7), **({"cond": lab} if lab is not None else {}))
        path = run_dir / "completions.png"
        save_image_grid(to_unit(torch.cat([x[:k], done.reshape(x[:k].shape)]), spec), path, nrow=k)
        written.append(path)

    # latent.png: test codes coloured by label.
    codes = None
    if isinstance(model, Encoder) and have_test:
        parts = []
        for start in range(0, len(x), 500):
            lab = None if labels is None else labels[start : start + 500]
            parts.append(_with_labels(model.encode, x[start : start + 500], lab).reshape(len(x[start : start + 500]), -1))
        codes = torch.cat(parts)  # (N, L)
        finite = torch.isfinite(codes).all(dim=1)  # a diverged model may give NaN codes
        codes = codes[finite] if bool(finite.any()) else None
        if codes is not None:
            points, note = project_2d(codes)
            path = run_dir / "latent.png"
            save_scatter(points, path, labels=None if y is None else y[finite], title=f"{len(points)} test codes ({note})")
            written.append(path)

    # manifold.png: decoded grid over a 2-D latent (images only).
    latent_dim = codes.shape[1] if codes is not None else getattr(model.config, "latent_dim", None)
    if codes is not None and len(codes) < 2:
        codes = None  # too few for quantiles: the grid spans the standard normal's instead
    if isinstance(model, Decoder) and latent_dim == 2 and spec.is_image:
        grid = latent_grid(codes, MANIFOLD_SIDE, device)  # (225, 2)
        lab = torch.zeros(len(grid), dtype=torch.long, device=device) if cond else None
        images = _with_labels(model.decode, grid, lab)  # (225, C, H, W)
        path = run_dir / "manifold.png"
        save_image_grid(to_unit(images, spec), path, nrow=MANIFOLD_SIDE)
        written.append(path)

    # interpolation.png: one row per pair, endpoints' inputs at both ends (images only).
    if isinstance(model, Interpolator) and spec.is_image and len(x) >= 2:
        rows = []
        for i, j in _pairs(y, len(x), INTERP_ROWS, same_label=cond):
            kwargs = {"cond": y[i : i + 1]} if cond and y is not None else {}
            path_images = model.interpolate(x[i], x[j], INTERP_STEPS, **kwargs)  # (steps, *shape)
            rows.append(torch.cat([x[i : i + 1], path_images.reshape(-1, *spec.shape), x[j : j + 1]]))
        if rows:
            path = run_dir / "interpolation.png"
            save_image_grid(to_unit(torch.cat(rows), spec), path, nrow=INTERP_STEPS + 2)
            written.append(path)
    return written
