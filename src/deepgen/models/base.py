"""The model contract every family implements.

A model is an ``nn.Module`` registered by name (``@register("vae")``) and built from
``(config, data_spec)``. The trainer only ever calls:

* :meth:`GenerativeModel.phases` - the optimisation phases, in order, each with its
  parameters, optimizer settings, repeats per step, active epochs and after-step hook;
* :meth:`GenerativeModel.loss` - the scalar to minimise for one phase on one batch, plus
  device tensors to log (never ``.item()`` inside a step);
* :meth:`GenerativeModel.sample` - new data in the data's own space.

Optional capabilities are small Protocols checked with ``isinstance`` (never by name):
:class:`LogProb`, :class:`HasELBO`, :class:`Encoder`, :class:`Decoder`,
:class:`Reconstructor`, :class:`Interpolator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import Config
from ..data.dataset import Batch, DataSpec


@dataclass(frozen=True)
class OptimizerSpec(Config):
    """Optimizer settings of one phase (``torch.optim`` names; fused/foreach chosen by the trainer)."""

    name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.0
    momentum: float = 0.0
    eps: float = 1e-8

    def validate(self) -> None:
        self.check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        self.check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), got {self.betas}")
        self.check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(eq=False)
class Phase:
    """One optimisation phase of a training step.

    ``repeats``: how many optimizer steps this phase takes per training step (a WGAN
    critic takes 5). ``new_batch``: each repeat after the first draws a fresh batch (the
    WGAN critic sees new data every iteration). ``epochs``: the phase is active for epochs
    in ``[start, stop)`` (``stop=None``: to the end), which is how greedy layer-wise
    pretraining is scheduled. ``after_step``: called after each optimizer step of this
    phase (WGAN weight clipping).
    """

    name: str
    parameters: list[nn.Parameter]
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    repeats: int = 1
    new_batch: bool = False
    epochs: tuple[int, int | None] = (0, None)
    after_step: Callable[[], None] | None = None

    def active(self, epoch: int) -> bool:
        start, stop = self.epochs
        return epoch >= start and (stop is None or epoch < stop)


@dataclass
class LossOutput:
    """The scalar ``loss`` to minimise and a dict of 0-d device tensors to log."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig(Config):
    """Base of every family's config. Families add their own fields."""

    lr: float = 1e-3


class GenerativeModel(nn.Module):
    """Base class of every registered model.

    Subclasses set ``config_class`` and implement ``phases``, ``loss`` and ``sample``.
    The first line of the class docstring is the one-line description shown by
    ``deepgen models``.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    registered_name: ClassVar[str] = ""
    #: Logged keys (as the trainer names them, e.g. "discriminator/loss") whose
    #: oscillation the trainer reports as ``<key>_osc``: half the range of the key's
    #: logged means over the last ``TrainConfig.osc_window`` log points.
    oscillation_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.spec = spec

    # -- the contract ---------------------------------------------------------------
    def phases(self) -> list[Phase]:
        """Optimisation phases in the order they run within one training step."""
        return [Phase("main", list(self.parameters()), OptimizerSpec(lr=self.config.lr))]

    def loss(self, batch: Batch, phase: str) -> LossOutput:
        """The scalar this ``phase`` minimises on ``batch`` (``batch.x`` (B, *spec.shape),
        ``batch.y`` (B,) labels or None), and the device tensors to log.

        Called once per repeat of the phase, inside the trainer's step: no host
        synchronisation (no ``.item()``, no data-dependent Python branches), so the step
        can be captured in a CUDA graph or compiled.
        """
        raise NotImplementedError

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
        mean: bool = False,
    ) -> torch.Tensor:
        """``n`` new examples (n, *spec.shape) in the data's space.

        ``cond``: labels (n,) for conditional models. ``mean=True`` returns the mean of the
        output distribution instead of a draw from it, where the family has one.
        """
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @classmethod
    def describe(cls) -> str:
        """One line for ``deepgen models``."""
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""

    def capabilities(self) -> list[str]:
        """Names of the optional Protocols this model satisfies."""
        return [name for name, proto in CAPABILITIES.items() if isinstance(self, proto)]


# -- optional capabilities -------------------------------------------------------------


@runtime_checkable
class LogProb(Protocol):
    """``log_prob(x)`` -> (N,) log-likelihood in nats; ``log_prob_note`` says exact or which bound.

    ``log_prob_discrete``: True when log_prob is a probability of the data's discrete values
    (binary pixels, or the levels of quantised data); False when it is a density, in which
    case the evaluator scores quantised data at x + u, u ~ U[-Delta/2, Delta/2] (Delta =
    ``Dataset.scale``), and bits/dim subtracts ln Delta per dimension (an upper bound on the
    discrete NLL, Theis et al. 2016).

    ``log_prob_normalised`` (optional; treated as True when absent, so not a Protocol
    member): False when ``log_prob`` is not (a bound on) a normalised probability or
    density of the data, e.g. a Bernoulli decoder on [0, 1]-valued data;
    ``log_prob_note`` must then say so, and the evaluator reports ``nll``/``elbo`` in nats
    but no bits/dim.
    """

    log_prob_note: str
    log_prob_discrete: bool

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HasELBO(Protocol):
    """``elbo(x)`` -> (N,) evidence lower bound in nats."""

    def elbo(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Encoder(Protocol):
    """``encode(x)`` -> (N, latent_dim) codes (the posterior mean for VAEs)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Decoder(Protocol):
    """``decode(z)`` -> (N, *shape), the mean of the output distribution."""

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Reconstructor(Protocol):
    """``reconstruct(x)`` -> (N, *shape), the output mean for input ``x``."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HasHistograms(Protocol):
    """``histograms()`` -> {name: values (any shape)} to plot (e.g. WGAN critic weights).

    The trainer writes them to TensorBoard at each log point and to ``histograms.png``
    with the sample pictures.
    """

    def histograms(self) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class ReconstructionNLL(Protocol):
    """``reconstruction_nll(x)`` -> (N,) nats: -log p(x | code of x) under the output distribution."""

    def reconstruction_nll(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Interpolator(Protocol):
    """``interpolate(x1, x2, steps)`` -> (steps, *shape) decoded along the latent path."""

    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8) -> torch.Tensor: ...


CAPABILITIES: dict[str, type] = {
    "log_prob": LogProb,
    "elbo": HasELBO,
    "encode": Encoder,
    "decode": Decoder,
    "reconstruct": Reconstructor,
    "reconstruction_nll": ReconstructionNLL,
    "interpolate": Interpolator,
    "histograms": HasHistograms,
}


def all_parameters(*modules: nn.Module | None) -> list[nn.Parameter]:
    """Parameters of several modules (None skipped), each once."""
    seen: set[int] = set()
    out = []
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def one_hot(y: torch.Tensor | None, num_classes: int | None, n: int, device: Any) -> torch.Tensor | None:
    """Labels (N,) -> (N, num_classes) float one-hot; None when the model is unconditional."""
    if not num_classes:
        return None
    if y is None:
        raise ValueError("this model is conditional: pass labels (cond=...) of shape (n,)")
    return nn.functional.one_hot(y.long().to(device), num_classes).float().reshape(n, num_classes)
