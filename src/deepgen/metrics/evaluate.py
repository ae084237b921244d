"""The one evaluator: named metrics over a split of a dataset, for any model.

A metric is a function ``(model, dataset, ctx) -> dict[str, float | str]`` registered in
:data:`METRICS` by name with the capability it needs (a key of
``deepgen.models.base.CAPABILITIES``: ``"log_prob"``, ``"elbo"``, ``"reconstruct"``, ...).
:func:`evaluate` checks every requested name and capability before running anything,
then runs each metric with the model in eval mode, under ``torch.no_grad()``, with all
randomness (dynamic binarization of the data, the model's own sampling such as the
importance samples of an IWAE bound) seeded from ``seed``. Each metric starts from the
same seed, so ``evaluate(m, ds, ["elbo", "nll"])`` reports the same ``nll`` as
``evaluate(m, ds, "nll")``, and both metrics see the same binarized test images.

Figures: likelihoods in nats per example (summed over dimensions) with the standard
error of the mean over examples, and bits per dimension
(:func:`deepgen.metrics.likelihood.bits_per_dim`). What a model's ``log_prob`` is comes
from its declaration (:meth:`GenerativeModel.likelihood_info`): a density of quantised
data is scored at the data layer's dequantized inputs y = (k + u) / L
(:func:`deepgen.data.dequantize`) and its bits/dim, (NLL / D + ln L) / ln 2, is an upper
bound on the discrete NLL (:func:`nll_metric`); a likelihood of kind ``"none"`` gets no
bits/dim figure.

Conditional models (``model.num_classes`` set) get the batch labels as ``cond=`` in every
call that scores data, and class labels 0, 1, ..., C-1, 0, 1, ... when a metric samples
(:func:`sample_labels`).

Progress: with ``progress`` on (``None``: when stderr is a terminal) every long loop shows
a tqdm bar named after the running metric: batches scored, samples drawn, features
extracted, feature-network training steps (:meth:`EvalContext.progress_bar`).

Ctrl-C: a KeyboardInterrupt during a metric becomes :class:`EvaluationInterrupted`, which
carries the figures of the metrics that finished (``.results``) and the name of the one
that was running (``.interrupted``).

Adding a metric::

    @metric("my-metric", needs="encode", description="...")
    def my_metric(model, dataset, ctx):
        with ctx.progress_bar(ctx.num_batches(dataset)) as bar:
            for batch in ctx.batches(dataset):
                ...
                bar.update(1)
        return {"my_metric": value}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..data.dataset import Batch, Dataset
from ..data.dequantize import dequantize
from ..data.resident import iterate
from ..errors import UserError
from ..models.base import CAPABILITIES, GenerativeModel, Likelihood, ReconstructionNLL
from ..registry import Registry
from .likelihood import bits_per_dim, mean_and_sem
from .progress import progress_bar, progress_switch, resolve_progress
from .reconstruction import bce, mse, psnr

Result = dict[str, Any]  # values are float | int | str
MetricFn = Callable[[GenerativeModel, Dataset, "EvalContext"], Result]
_NOISE_STREAM = 0x5EED_DE0  # offset of the dequantization-noise seed from EvalContext.seed


@dataclass(frozen=True)
class EvalContext:
    """Where and how a metric reads its data.

    ``split``: "train", "test" or "val" (the held-out validation split of data loaded with ``validation=N``). ``batch_size``: examples per model call (bound memory
    with it: an IWAE bound with k samples evaluates ``batch_size * k`` decoder passes at
    once). ``limit``: use the first ``limit`` examples (0 = the whole split). ``device``:
    where batches are placed (the model's device). ``seed``: seeds :meth:`generator`
    (dynamic binarization) and the global RNG the model samples from. ``progress``:
    show progress bars (:meth:`progress_bar`); ``metric``: the running metric's name,
    which labels them (:func:`evaluate` sets both).
    """

    split: str = "test"
    batch_size: int = 256
    limit: int = 0
    device: torch.device | str = "cpu"
    seed: int = 0
    data_dir: str | None = None  # where metrics that need other data files (feature networks) look
    progress: bool = False  # tqdm bars on the long loops (evaluate(progress=None) turns them on at a terminal)
    metric: str = ""  # the metric being run: the bars' label

    def __post_init__(self) -> None:
        if self.split not in ("train", "test", "val"):
            raise UserError(f"unknown split {self.split!r}. Accepted: train, test, val (data with validation=N).")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit < 0:
            raise UserError(f"limit must be >= 0 (0 = the whole split), got {self.limit}")

    def generator(self) -> torch.Generator:
        """A fresh generator on ``device`` seeded with ``seed`` (same draws every call)."""
        return torch.Generator(torch.device(self.device)).manual_seed(self.seed)

    def noise_generator(self) -> torch.Generator:
        """A fresh generator on ``device`` for dequantization noise, seeded from ``seed``.

        Its own stream (not :meth:`generator`'s), so that adding noise never shifts the
        binarization draws; the same draws every call, so ``nll`` and ``elbo`` score the
        same dequantized inputs.
        """
        return torch.Generator(torch.device(self.device)).manual_seed(self.seed + _NOISE_STREAM)

    def num_examples(self, dataset: Dataset) -> int:
        """How many examples of the split the metrics use."""
        n = len(dataset.split(self.split))
        return n if self.limit <= 0 else min(self.limit, n)

    def num_batches(self, dataset: Dataset) -> int:
        """How many batches :meth:`batches` yields."""
        return math.ceil(self.num_examples(dataset) / self.batch_size)

    def progress_bar(self, total: int | None, desc: str = "", unit: str = "batch") -> Any:
        """A tqdm bar of ``total`` ``unit``s labelled ``"<metric>: <desc>"``, silent when
        ``progress`` is off. Use it as a context manager and ``bar.update(k)`` with host
        integers (never a device tensor: no synchronisation)::

            with ctx.progress_bar(n, "sampling", unit="sample") as bar:
                ...
                bar.update(m)
        """
        label = ": ".join(part for part in (self.metric, desc) if part) or "eval"
        return progress_bar(total, label, enabled=self.progress, unit=unit)

    def with_metric(self, name: str) -> EvalContext:
        """This context with ``metric=name`` (the bars' label)."""
        return replace(self, metric=name)

    def batches(self, dataset: Dataset) -> Iterator[Batch]:
        """The split's first :meth:`num_examples` examples, in order, in model space on ``device``.

        Each call starts a fresh :meth:`generator`, so every metric sees the same
        binarization of the data.
        """
        return iterate(dataset, self.split, self.batch_size, self.device, self.generator(), self.limit)


METRICS: Registry[MetricFn] = Registry("metric")


def metric(name: str, *, needs: str | None, description: str, grad: bool = False) -> Callable[[MetricFn], MetricFn]:
    """Decorator: register ``fn`` as metric ``name``.

    ``needs``: the capability (a key of ``CAPABILITIES``) the model must have, or None.
    ``grad``: run with gradients enabled (for metrics that differentiate the model).
    """
    if needs is not None and needs not in CAPABILITIES:
        raise ValueError(f"metric {name!r} needs unknown capability {needs!r}; known: {sorted(CAPABILITIES)}")

    def add(fn: MetricFn) -> MetricFn:
        fn.needs = needs  # type: ignore[attr-defined]
        fn.description = description  # type: ignore[attr-defined]
        fn.grad = grad  # type: ignore[attr-defined]
        return METRICS.register(name)(fn)

    return add


def metric_descriptions() -> list[tuple[str, str, str]]:
    """(name, capability needed, one-line description) for every metric; for ``deepgen eval --help``."""
    return [(n, METRICS.get(n).needs or "-", METRICS.get(n).description) for n in METRICS.names()]  # type: ignore[attr-defined]


# -- helpers ------------------------------------------------------------------------------


def _per_example(model: GenerativeModel, dataset: Dataset, ctx: EvalContext, fn: Callable[[Batch], torch.Tensor]) -> torch.Tensor:
    """Concatenate ``fn(batch)`` (B,) over the context's batches -> (N,) float64 on the device.

    Values stay on the device until the caller reduces them (one host sync per metric).
    """
    parts = []
    with ctx.progress_bar(ctx.num_batches(dataset)) as bar:
        for batch in ctx.batches(dataset):
            v = fn(batch)
            if v.shape != (len(batch),):
                raise ValueError(
                    f"{type(model).__name__} returned shape {tuple(v.shape)} for a batch of {len(batch)}; expected ({len(batch)},)"
                )
            parts.append(v.detach().double())
            bar.update(1)  # a host count: no sync (the values stay on the device)
    return torch.cat(parts)


def conditional_classes(model: GenerativeModel, dataset: Dataset) -> int | None:
    """The number of classes C a conditional model takes labels of; None if unconditional.

    A conditional model evaluated on a dataset without labels, or with another number of
    classes than it was trained on, is one :class:`UserError` naming the problem.
    """
    classes = getattr(model, "num_classes", None)
    if classes is None:
        return None
    label = getattr(model, "registered_name", "") or type(model).__name__
    if not dataset.spec.num_classes:
        raise UserError(
            f"this {label} is conditional (conditional=true): it needs class labels, but dataset {dataset.name!r} "
            f"has none. Evaluate it on labelled data with its {classes} classes."
        )
    if dataset.spec.num_classes != classes:
        raise UserError(
            f"this {label} is conditional on {classes} classes, but dataset {dataset.name!r} has "
            f"{dataset.spec.num_classes}. Evaluate it on data with the classes it was trained on."
        )
    return classes


def sample_labels(classes: int | None, start: int, n: int, device: torch.device | str) -> torch.Tensor | None:
    """Labels (n,) ``(start + i) % classes`` for samples start..start+n-1; None when unconditional.

    Cycling the classes over the whole draw gives each class an equal share of the samples,
    whatever the batch size.
    """
    if not classes:
        return None
    return torch.arange(start, start + n, device=device) % classes


def label_kwargs(model: GenerativeModel, dataset: Dataset, batch: Batch) -> dict[str, torch.Tensor]:
    """The labels keyword of a capability call on ``batch``: ``{"cond": batch.y}`` with
    ``batch.y`` int64 (B,) for a conditional model, ``{}`` for an unconditional one.

    Every capability method (``log_prob``, ``elbo``, ``encode``, ``reconstruct``,
    ``reconstruction_nll``, ...) takes labels by that one keyword, so scoring code writes
    ``model.log_prob(x, **label_kwargs(model, dataset, batch))`` for any model. A
    conditional model on a dataset without labels, with another number of classes, or on a
    batch without labels is one :class:`UserError` (:func:`conditional_classes`).
    """
    if conditional_classes(model, dataset) is None:
        return {}
    if batch.y is None:
        raise UserError(
            f"this model is conditional (conditional=true): it needs class labels, but the {dataset.name!r} "
            "examples being evaluated have none."
        )
    return {"cond": batch.y}


def likelihood_of(model: GenerativeModel) -> Likelihood:
    """The model's declared :class:`Likelihood`; a model with ``log_prob`` but no declaration
    is a programming error (the conformance suite catches it)."""
    info = model.likelihood_info() if isinstance(model, GenerativeModel) else None
    if info is None:
        name = getattr(model, "registered_name", "") or type(model).__name__
        raise TypeError(f"{name} has log_prob but its likelihood_info() declares nothing")
    return info


NOT_NORMALISED_NOTE = (
    "not a normalised likelihood (the model declares its log_prob a loss): no bits/dim; "
    "compare with other models only via samples"
)


def dequantization_width(model: GenerativeModel, dataset: Dataset) -> float | None:
    """The bin width 1 / L when the likelihood metrics dequantize the data for ``model``, else None.

    Only for a normalised density (not ``discrete``) of quantised data (``DataSpec.bin_width``
    set); probabilities of discrete values (Bernoulli on binary data, categorical, the
    discretized logistic mixture, tokens) are exact and are never dequantized.
    """
    info = likelihood_of(model)
    if not info.normalised or info.discrete:
        return None
    return dataset.spec.bin_width


def scored_inputs(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Callable[[Batch], torch.Tensor]:
    """The function ``batch -> x`` giving the inputs the likelihood metrics score.

    ``x`` has the batch's shape (B, *dataset.spec.shape), in model space on the batch's
    device: ``batch.x`` itself, or, for a density of quantised data
    (:func:`dequantization_width` not None), ``batch.x`` dequantized to (k + u) / L
    (:func:`deepgen.data.dequantize`, float) with u from one noise stream per call of this
    function (:meth:`EvalContext.noise_generator`): call it once per pass over the data and
    apply it to the batches in order, and the draws are those of ``nll`` and ``elbo``.
    """
    if dequantization_width(model, dataset) is None:
        return lambda b: b.x
    gen = ctx.noise_generator()
    return lambda b: dequantize(b.x, dataset.spec, gen)


# -- metrics ------------------------------------------------------------------------------


@metric("nll", needs="log_prob", description="negative log-likelihood (nats, SEM, bits/dim); exact or the bound the model states")
def nll_metric(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Result:
    """-log p(x) per example from ``model.log_prob`` (exact for flows and autoregressive
    models, the k-sample IWAE bound for VAEs, Burda et al. 2016 eq. 8), averaged.
    Conditional models score -log p(x | y) with the examples' labels.

    Keys: ``nll`` (nats), ``nll_sem``, ``nll_bpd``, ``nll_note`` (the note of the model's
    :meth:`~GenerativeModel.likelihood_info`: "exact" or which bound).

    * Probabilities of discrete values (a ``discrete`` likelihood: binary pixels,
      categorical or discretized-logistic heads on quantised data, tokens) and densities
      of real data: ``nll_bpd = nll / (D ln 2)``, the model's own figure.
    * A density of quantised data (levels k in 0..L-1): each example is scored at
      y = (k + u) / L, u ~ U[0, 1)^D, drawn from :meth:`EvalContext.noise_generator`
      (reproducible per seed; :func:`deepgen.data.dequantize`, the convention the model
      trains on). ``nll`` is then the density's NLL at those points and
      ``nll_bpd = (nll / D + ln L) / ln 2`` an upper bound on the discrete NLL
      -log P(levels) in bits/dim (Theis et al. 2016, sec. 3.1), the figure of the
      published tables; the extra key ``nll_bin_width`` gives 1 / L.
    * A likelihood of kind ``"none"`` (a Bernoulli decoder on [0, 1]-valued data): ``nll``
      is its loss at the data, and no ``nll_bpd`` is reported.
    """
    inputs = scored_inputs(model, dataset, ctx)

    def nll(b: Batch) -> torch.Tensor:  # (B,)
        return -model.log_prob(inputs(b), **label_kwargs(model, dataset, b))  # type: ignore[attr-defined]

    values = _per_example(model, dataset, ctx, nll)  # (N,)
    mean, sem = mean_and_sem(values)
    out: Result = {"nll": mean, "nll_sem": sem}
    out.update(_bpd_keys("nll", model, dataset, mean))
    out["nll_note"] = likelihood_of(model).note
    out.update(_original_units(model, dataset, mean, out["nll_note"]))
    return out


def _original_units(model: GenerativeModel, dataset: Dataset, nll_nats: float, note: str) -> Result:
    """A standardised table's NLL in its own units: the model scores z = (x - mean) / std,
    and -log p(x) = -log p(z) + sum_j log std_j (the change of variables). ``{}`` for other
    data and for likelihoods that are not normalised; else ``nll_original_units`` and the
    note extended to say which of the two ``nll`` is."""
    std = dataset.state.get("std") if dataset.spec.kind == "real" and "mean" in dataset.state else None
    if std is None or not likelihood_of(model).normalised:
        return {}
    shift = float(torch.as_tensor(std, dtype=torch.float64).log().sum())
    return {
        "nll_original_units": nll_nats + shift,
        "nll_note": f"{note}; nll is of the standardised columns (x - mean) / std, nll_original_units of the "
                    f"table's own units (+ sum of log std = {shift:.4g} nats)",
    }


def _bpd_keys(prefix: str, model: GenerativeModel, dataset: Dataset, nll_nats: float) -> Result:
    """``{prefix_bpd, [prefix_bin_width]}`` for a mean NLL (nats) scored as :func:`scored_inputs` does;
    ``{}`` for a model whose likelihood is not normalised."""
    if not likelihood_of(model).normalised:
        return {}
    width = dequantization_width(model, dataset)
    out: Result = {f"{prefix}_bpd": bits_per_dim(nll_nats, dataset.spec.dim, bin_width=width)}
    if width is not None:
        out[f"{prefix}_bin_width"] = width
    return out


@metric("elbo", needs="elbo", description="-ELBO, an upper bound on -log p(x) (nats, SEM, bits/dim); eval.json keeps the ELBO itself")
def elbo_metric(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Result:
    """Mean ELBO, E_q[log p(x, z) - log q(z | x)] (Kingma & Welling 2014, eq. 3), per example.
    Conditional models get the examples' labels (the ELBO of log p(x | y)).

    Printed (``deepgen eval``, the report, the examples: :func:`deepgen.metrics.units.eval_figures`)
    as -ELBO in nats, an upper bound on -log p(x) beside ``nll``; the result keeps the raw bound.

    Keys: ``elbo`` (nats; a lower bound on log p(x), so usually negative), ``elbo_sem``,
    ``elbo_bpd`` (-ELBO in bits per dimension: an upper bound on the NLL's bpd). A density
    of quantised data is scored at the same dequantized inputs as ``nll``, and
    ``elbo_bpd`` is then an upper bound on the discrete NLL in bits/dim (``elbo_bin_width``
    gives the bin width; see :func:`nll_metric`). A model whose likelihood is of kind
    ``"none"`` gets no ``elbo_bpd`` but an ``elbo_note`` saying why.
    """
    inputs = scored_inputs(model, dataset, ctx)

    def elbo(b: Batch) -> torch.Tensor:  # (B,)
        return model.elbo(inputs(b), **label_kwargs(model, dataset, b))  # type: ignore[attr-defined]

    values = _per_example(model, dataset, ctx, elbo)  # (N,)
    mean, sem = mean_and_sem(values)
    out: Result = {"elbo": mean, "elbo_sem": sem}
    out.update(_bpd_keys("elbo", model, dataset, -mean))
    if not likelihood_of(model).normalised:
        out["elbo_note"] = NOT_NORMALISED_NOTE
    return out


@metric("recon", needs="reconstruct", description="reconstruction error of the output mean (MSE, PSNR, BCE on binary data, head NLL)")
def recon_metric(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Result:
    """Error of ``model.reconstruct(x)`` (the output mean) against ``x`` (``reconstruct(x, cond=labels)``
    for a conditional model).

    Keys: ``recon_mse`` (squared error averaged over elements, then over examples) and
    ``recon_mse_sem``; ``recon_sse`` (summed over elements); ``recon_psnr`` (dB) for
    bounded data; ``recon_bce`` (nats, summed over elements) for binary data;
    ``recon_nll`` (nats): -log p(x | code) under the model's likelihood head at the
    reconstruction (the autoencoder's training loss without regulariser or corruption),
    where the model has the ``reconstruction_nll`` capability.
    """
    spec = dataset.spec
    if spec.kind == "tokens":
        raise UserError("metric 'recon' compares values element by element; it does not apply to token data.")
    data_range = {"binary": 1.0, "continuous": 1.0}.get(spec.kind)
    if spec.kind == "discrete" and spec.num_levels:
        data_range = float(spec.num_levels - 1)
    head_nll = model.reconstruction_nll if isinstance(model, ReconstructionNLL) else None
    conditional_classes(model, dataset)  # a conditional model on unlabelled data: one UserError up front

    cols: dict[str, list[torch.Tensor]] = {"mse": [], "sse": [], "psnr": [], "bce": [], "nll": []}
    with ctx.progress_bar(ctx.num_batches(dataset)) as bar:
        for batch in ctx.batches(dataset):
            x = batch.x
            labels = label_kwargs(model, dataset, batch)  # {"cond": (B,)} for a conditional model
            x_hat = model.reconstruct(x, **labels)  # (B, *shape)
            cols["mse"].append(mse(x, x_hat, "mean").double())
            cols["sse"].append(mse(x, x_hat, "sum").double())
            if data_range is not None:
                cols["psnr"].append(psnr(x, x_hat, data_range).double())
            if spec.kind == "binary":
                cols["bce"].append(bce(x, x_hat).double())
            if head_nll is not None:
                cols["nll"].append(head_nll(x, **labels).detach().double())
            bar.update(1)
    out: Result = {}
    mean, sem = mean_and_sem(torch.cat(cols["mse"]))
    out["recon_mse"] = mean
    out["recon_mse_sem"] = sem
    out["recon_sse"] = mean_and_sem(torch.cat(cols["sse"]))[0]
    for key in ("psnr", "bce", "nll"):
        if cols[key]:
            out[f"recon_{key}"] = mean_and_sem(torch.cat(cols[key]))[0]
    return out


# -- the evaluator --------------------------------------------------------------------------


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`evaluate`: the figures of the metrics that finished survive.

    ``results``: ``{"split", "n", <keys of each finished metric>...}``, what
    :func:`evaluate` would have returned had only those metrics been asked for.
    ``interrupted``: the name of the metric that was running (its partial work is
    dropped). A subclass of KeyboardInterrupt, so code that does not know it still stops.
    """

    def __init__(self, results: dict[str, Any], interrupted: str) -> None:
        self.results = results
        self.interrupted = interrupted
        done = [k for k in results if k not in ("split", "n")]
        super().__init__(
            f"evaluation interrupted during metric {interrupted!r}; "
            + (f"{len(done)} figure(s) of the finished metrics kept" if done else "no metric had finished")
        )


def _parse_names(names: list[str] | tuple[str, ...] | str) -> list[str]:
    if isinstance(names, str):
        names = names.split(",")
    out = [n.strip() for n in names if n.strip()]
    if not out:
        raise UserError(f"no metric named. Accepted: {', '.join(METRICS.names())}.")
    for n in out:
        METRICS.get(n)  # unknown -> UserError listing the accepted names
    return list(dict.fromkeys(out))  # keep order, drop repeats


def _supports(model: GenerativeModel, name: str) -> bool:
    needs = METRICS.get(name).needs  # type: ignore[attr-defined]
    return needs is None or isinstance(model, CAPABILITIES[needs])


DEFAULT_METRICS = ("recon", "elbo", "nll")


def default_metrics(model: GenerativeModel) -> list[str]:
    """The metrics ``deepgen eval`` computes when none are named: those of recon, elbo and
    nll the model supports (a VAE all three, an autoencoder recon, a flow, an autoregressive
    model or ddpm nll). A model with none of them (a GAN) raises one :class:`UserError`
    naming the metrics it does support, which are then asked for by name."""
    names = [n for n in DEFAULT_METRICS if _supports(model, n)]
    if names:
        return names
    label = getattr(model, "registered_name", "") or type(model).__name__
    supported = [n for n in METRICS.names() if _supports(model, n)]
    raise UserError(
        f"model {label!r} has none of the default metrics ({', '.join(DEFAULT_METRICS)}); name the metrics with --metrics. "
        f"This model supports: {', '.join(supported) or 'none'}."
    )


def check_metrics(model: GenerativeModel, names: list[str] | tuple[str, ...] | str) -> list[str]:
    """Parse metric names and check the model can provide each; return the names.

    Unknown names and missing capabilities raise one :class:`UserError` before anything runs.
    """
    names = _parse_names(names)
    missing = [n for n in names if not _supports(model, n)]
    if not missing:
        return names
    label = getattr(model, "registered_name", "") or type(model).__name__
    caps = model.capabilities() if isinstance(model, GenerativeModel) else []
    supported = [n for n in names if _supports(model, n)]
    lines = []
    for n in missing:
        needs = METRICS.get(n).needs  # type: ignore[attr-defined]
        proto = CAPABILITIES[needs].__name__
        lines.append(f"metric {n!r} needs a model with {needs}() (the {proto} capability)")
    raise UserError(
        f"{'; '.join(lines)}; model {label!r} has: {', '.join(caps) or 'none of the optional capabilities'}. "
        f"Of the requested metrics ({', '.join(names)}) this model supports: {', '.join(supported) or 'none'}."
    )


def _seed_global_rng(seed: int, device: torch.device) -> None:
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def evaluate(
    model: GenerativeModel,
    dataset: Dataset,
    names: list[str] | tuple[str, ...] | str,
    *,
    split: str = "test",
    batch_size: int = 256,
    limit: int = 0,
    seed: int = 0,
    device: torch.device | str | None = None,
    data_dir: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run metrics ``names`` (a list, or one comma-separated string) on ``model``.

    ``device=None`` evaluates where the model is; otherwise the model is moved there.
    The model runs in eval mode (its previous mode is restored afterwards) under
    ``torch.no_grad()``. The caller's global RNG state is left unchanged.
    ``progress``: tqdm bars on stderr for every long loop (batches, sampling, feature
    extraction, feature-network training); ``None`` = on when stderr is a terminal.

    Ctrl-C raises :class:`EvaluationInterrupted` (a KeyboardInterrupt) whose ``.results``
    hold the metrics finished so far and ``.interrupted`` the one that was running.

    Returns ``{"split": ..., "n": examples used, <each metric's keys>...}``; likelihoods
    are in nats per example. Unknown names, or metrics whose capability the model lacks,
    raise :class:`UserError` before anything runs.

    >>> evaluate(model, ds, ["elbo", "nll"], limit=1000)  # doctest: +SKIP
    {'split': 'test', 'n': 1000, 'elbo': -89.1, 'elbo_sem': 0.3, ..., 'nll_note': '...'}
    """
    metric_names = check_metrics(model, names)
    if device is not None:
        model.to(device)
    dev = torch.device(device) if device is not None else model.device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    ctx = EvalContext(
        split=split, batch_size=batch_size, limit=limit, device=dev, seed=seed, data_dir=data_dir,
        progress=resolve_progress(progress),
    )
    n = ctx.num_examples(dataset)
    if n == 0:
        raise UserError(f"the {split} split of dataset {dataset.name!r} has no examples to evaluate.")

    results: dict[str, Any] = {"split": split, "n": n}
    was_training = model.training
    model.eval()
    try:
        for name in metric_names:
            fn = METRICS.get(name)
            rng_devices = [dev] if dev.type == "cuda" else []
            try:
                # Fork so that seeding for reproducible model sampling leaves the caller's RNG alone.
                with (
                    torch.random.fork_rng(devices=rng_devices),
                    torch.set_grad_enabled(fn.grad),  # type: ignore[attr-defined]
                    progress_switch(ctx.progress),  # progress=None below (feature nets) follows this switch
                ):
                    _seed_global_rng(seed, dev)
                    figures = fn(model, dataset, ctx.with_metric(name))
            except KeyboardInterrupt as e:
                raise EvaluationInterrupted(dict(results), name) from e
            except NotImplementedError as e:  # a model without a sampler (or another method a metric calls)
                raise UserError(_not_implemented(model, name, e)) from None
            results.update(figures)
    finally:
        model.train(was_training)
    return results


def _not_implemented(model: GenerativeModel, name: str, error: NotImplementedError) -> str:
    """The message of metric ``name`` stopped by a method ``model`` does not implement
    (its innermost frame names the method: ``sample`` for a model that cannot sample)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    method = tb.tb_frame.f_code.co_name if tb is not None else "a method"
    label = getattr(model, "registered_name", "") or type(model).__name__
    detail = f" ({error})" if str(error) else ""
    return (f"metric {name!r} calls {method}() of model {label!r}, which it does not implement{detail}: "
            f"this metric cannot run for this model; ask for others with --metrics.")


def format_value(v: Any) -> str:
    """One figure as :func:`format_table` (``deepgen eval``) prints it: floats with 4
    decimals (scientific notation outside [1e-3, 1e6)), everything else as ``str``."""
    if isinstance(v, bool) or isinstance(v, int) or isinstance(v, str):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        if v == 0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:.4f}"
        return f"{v:.4e}"
    return str(v)


def format_table(results: dict[str, Any]) -> str:
    """Aligned two-column text (name, value), one line per entry, in the dict's order.

    Floats get 4 decimals (scientific notation outside [1e-3, 1e6)); numbers are
    right-aligned on their decimal columns' right edge, strings left as they are.
    """
    if not results:
        return ""
    keys = [str(k) for k in results]
    values = [format_value(v) for v in results.values()]
    kw = max(len(k) for k in keys)
    num_w = max((len(s) for s, v in zip(values, results.values()) if not isinstance(v, str)), default=0)
    lines = []
    for k, s, v in zip(keys, values, results.values()):
        cell = s if isinstance(v, str) else s.rjust(num_w)
        lines.append(f"{k.ljust(kw)}  {cell}".rstrip())
    return "\n".join(lines)
