"""The model contract every family implements.

A model is an ``nn.Module`` registered by name (``@register("vae")``) and built from
``(config, data_spec)``. The trainer only ever calls:

* :meth:`GenerativeModel.phases` - the optimisation phases, in order, each with its
  parameters (optionally in :class:`~deepgen.optim.ParamGroup` s), optimizer settings,
  repeats per step, active epochs and after-step hook;
* :meth:`GenerativeModel.loss` - the scalar to minimise for one phase on one batch, plus
  device tensors to log (never ``.item()`` inside a step);
* :meth:`GenerativeModel.sample` - new data in the data's own space;
* :class:`DataInit` ``.data_init(batch)``, where a model has it: once, before the first
  step of a new run (never on resume).

What a model declares, rather than what callers guess from its config:

* ``data_kinds``: the :class:`~deepgen.data.dataset.DataSpec` kinds it accepts; the base
  class refuses the others with one message naming the models that take them;
* ``num_classes``: the number of classes it is conditioned on (None: unconditional), set
  by the base class from the family's ``conditional`` argument; all labels travel as
  ``cond=`` and pass through :meth:`GenerativeModel.labels`, which also knows the null
  label (:data:`NULL_LABEL`) of models trained for classifier-free guidance;
* :meth:`GenerativeModel.likelihood_info`: what its ``log_prob`` is (:class:`Likelihood`);
* ``output_mean``: whether ``sample(mean=True)`` is the mean of an output distribution
  (a decoder's E[x | z]) rather than a draw (:meth:`GenerativeModel.has_output_mean`);
* its config's ``load_time`` and ``sampling`` settings: what a loaded run may change,
  and which of those sampling reads (:class:`ModelConfig`).

Optional capabilities are small Protocols checked with ``isinstance`` (never by name),
all taking labels as ``cond=``: :class:`LogProb`, :class:`HasELBO`, :class:`Encoder`,
:class:`Decoder`, :class:`Reconstructor`, :class:`ReconstructionNLL`,
:class:`Interpolator`, :class:`Invertible`, :class:`Completion`,
:class:`Autoregressive`, :class:`CachedDecoding`, :class:`Continuation`, :class:`DataInit`,
:class:`HasHistograms`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import Config
from ..data.dataset import KINDS, Batch, DataSpec, Kind
from ..errors import UserError
from ..optim import OptimizerSpec, ParamGroup
from ..registry import MODELS
from .networks import Network, Shape, check_network

#: The label that stands for "no label" in ``cond=`` for models that declare
#: ``null_label`` (classifier-free guidance, Ho & Salimans 2022: the unconditional model
#: is the conditional one given the null label).
NULL_LABEL = -1


@dataclass(eq=False)
class Phase:
    """One optimisation phase of a training step.

    ``parameters``: the parameters this phase updates, or :class:`ParamGroup` s (each with
    its own weight decay; nanoGPT's split is :func:`deepgen.optim.decay_groups`); after
    construction ``parameters`` is always the flat list and ``groups`` the groups.
    ``repeats``: how many optimizer steps this phase takes per training step (a WGAN
    critic takes 5). ``new_batch``: each repeat after the first draws a fresh batch (the
    WGAN critic sees new data every iteration). ``epochs``: the phase is active for epochs
    in ``[start, stop)`` (``stop=None``: to the end), which is how greedy layer-wise
    pretraining is scheduled. ``after_step``: called after each optimizer step of this
    phase (WGAN weight clipping).
    """

    name: str
    parameters: list[nn.Parameter] | list[ParamGroup]
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    repeats: int = 1
    new_batch: bool = False
    epochs: tuple[int, int | None] = (0, None)
    after_step: Callable[[], None] | None = None
    groups: list[ParamGroup] = field(init=False)

    def __post_init__(self) -> None:
        items = list(self.parameters)
        if items and all(isinstance(g, ParamGroup) for g in items):
            self.groups = items  # type: ignore[assignment]
            self.parameters = [p for g in self.groups for p in g.params]
        elif any(isinstance(g, ParamGroup) for g in items):
            raise TypeError(f"phase {self.name!r}: parameters must be all parameters or all ParamGroups")
        else:
            self.groups = [ParamGroup(items)]  # type: ignore[arg-type]

    def active(self, epoch: int) -> bool:
        start, stop = self.epochs
        return epoch >= start and (stop is None or epoch < stop)


def _or_list(words: Sequence[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


@dataclass
class LossOutput:
    """The scalar ``loss`` to minimise and a dict of 0-d device tensors to log."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig(Config):
    """Base of every family's config. Families add their own fields.

    Sampling options (steps, sampler, eta, guidance, temperature, top-k) are fields of the
    families that have them. ``load_time`` names the fields a loaded run may override
    (``deepgen sample --set``, ``load_run(model_overrides=...)``): the sampling and
    evaluation knobs. Every other field defines the model that was trained (a schedule, a
    likelihood, a head count), so changing it would make the loaded weights compute
    something else, silently when no parameter shape changes.

    ``sampling`` names the ``load_time`` fields that :meth:`GenerativeModel.sample` reads
    (a diffusion model's sampler, steps, eta, guidance; a temperature, top-k): what
    ``deepgen sample --set`` lists. The others are evaluation knobs (an IWAE ``k``, a
    bound's stride). tests/test_review_s13_cli.py checks ``sampling <= load_time``.
    """

    load_time: ClassVar[frozenset[str]] = frozenset()
    sampling: ClassVar[frozenset[str]] = frozenset()

    lr: float = 1e-3


@dataclass(frozen=True)
class Likelihood:
    """What a model's ``log_prob`` is, declared by the model (:meth:`GenerativeModel.likelihood_info`).

    * ``kind``: ``"exact"`` (log p(x) itself: flows, autoregressive models), ``"bound"``
      (a lower bound on log p(x): the IWAE bound, the diffusion variational bound) or
      ``"none"`` (not a normalised probability or density of the data, e.g. a Bernoulli
      decoder on [0, 1]-valued data, Loaiza-Ganem & Cunningham 2019: a loss; no bits/dim).
    * ``discrete``: True when it is a probability of the data's discrete values (binary
      pixels, the levels of quantised data, tokens); False for a density, in which case
      quantised data is scored at dequantized inputs (:func:`deepgen.data.dequantize`) and
      bits/dim counts the bin width (an upper bound on the discrete NLL, Theis et al. 2016).
    * ``note``: one line for the figures ("exact", "IWAE bound, k=5000 ...").
    """

    kind: Literal["exact", "bound", "none"]
    discrete: bool
    note: str

    @property
    def normalised(self) -> bool:
        """True when ``log_prob`` is (a bound on) a normalised probability or density."""
        return self.kind != "none"


#: The capability methods whose first argument is data x (N, *spec.shape): each family's
#: definition is wrapped, when the class is made, so that it checks x first
#: (:meth:`GenerativeModel.check_data`); :data:`CHECKED_METHODS` adds those with other
#: arguments to check (a count, codes, single examples, a mask).
DATA_METHODS: tuple[str, ...] = ("log_prob", "elbo", "encode", "reconstruct", "reconstruction_nll", "complete")
CHECKED_METHODS: tuple[str, ...] = (*DATA_METHODS, "sample", "decode", "interpolate")


#: Methods that run in eval mode whatever the model's mode, each module's own mode restored
#: after: their outputs are the model's (no dropout, batch norm's running statistics, and
#: no update of them), not a training-time perturbation, and repeat with the same generator.
EVAL_METHODS: tuple[str, ...] = ("sample", "interpolate")


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _is_whole(n: Any) -> bool:
    """An integer (Python's, numpy's, a 0-d integer tensor's ``__index__``), not a bool."""
    if isinstance(n, bool):
        return False
    try:
        operator.index(n)
    except TypeError:
        return False
    return True


def _checking(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn(self, ...)`` that first checks its arguments (:meth:`GenerativeModel.check_arguments`):
    one :class:`UserError` naming the method, what it takes and what it got, instead of a
    matrix-shape or index error from deep inside a network."""

    @functools.wraps(fn)
    def call(self: GenerativeModel, *args: Any, **kwargs: Any) -> Any:
        self.check_arguments(name, args, kwargs)
        if name in EVAL_METHODS:
            with self.modes(train=False):
                return fn(self, *args, **kwargs)
        return fn(self, *args, **kwargs)

    call._checks_arguments = True  # type: ignore[attr-defined]
    return call


class GenerativeModel(nn.Module):
    """Base class of every registered model.

    Subclasses set ``config_class`` (and ``data_kinds`` where they differ), call
    ``super().__init__(config, spec, conditional=...)`` and implement ``phases``, ``loss``
    and ``sample``. The first line of the class docstring is the one-line description
    shown by ``deepgen models``.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    registered_name: ClassVar[str] = ""
    #: The data kinds this model accepts (``DataSpec.kind``).
    data_kinds: ClassVar[tuple[Kind, ...]] = ("binary", "continuous", "discrete", "real")
    #: Logged keys (as the trainer names them, e.g. "discriminator/loss") whose
    #: oscillation the trainer reports as ``<key>_osc``: half the range of the key's
    #: logged means over the last ``TrainConfig.osc_window`` log points.
    oscillation_keys: ClassVar[tuple[str, ...]] = ()
    #: The networks a user may replace with a module of their own (``create_model(...,
    #: encoder=deepgen.network(MyEncoder, ...))``): name -> what it must map, in shapes.
    #: The family builds each through :meth:`replaceable` and says in :meth:`network_io`
    #: what a small batch of inputs is and what output shape its own network returns.
    replaceable_networks: ClassVar[Mapping[str, str]] = {}
    #: Trainer settings (TrainConfig fields) this family trains with unless the user sets
    #: them: ``deepgen train`` and ``deepgen bench`` start from them, and a ``Trainer``
    #: fills a config's unset fields from them (TrainConfig.for_model; DDPM: an EMA of the
    #: weights). Only the fields of ``training.config.MODEL_DEFAULTED`` can be unset.
    train_defaults: ClassVar[Mapping[str, Any]] = {}
    #: True when ``sample(mean=True)`` returns the mean of an output distribution given a
    #: code, E[x | z] (a decoder's likelihood head: autoencoders, the VAE), which is not a
    #: draw from it; ``deepgen sample`` then calls its images "means of the output
    #: distribution". False: every sample is a draw (GANs, diffusion, flows, autoregressive
    #: models), and ``mean`` changes at most how binary values are read (the 0.5
    #: threshold instead of a Bernoulli draw). None: not declared by the family, which
    #: then has one exactly when it has an output distribution given a code, the
    #: :class:`ReconstructionNLL` capability (:meth:`has_output_mean`).
    output_mean: ClassVar[bool | None] = None

    def __init__(
        self,
        config: ModelConfig,
        spec: DataSpec,
        *,
        conditional: bool = False,
        null_label: bool = False,
        networks: Mapping[str, Network] | None = None,
    ) -> None:
        """``conditional``: the model takes the data's class labels (``spec.num_classes``
        must be set); ``null_label``: it also accepts :data:`NULL_LABEL` ("no label");
        ``networks``: the user's networks by name (:attr:`replaceable_networks`), which the
        family builds in place of its own (:meth:`replaceable`)."""
        super().__init__()
        networks = dict(networks or {})
        type(self).check_network_names(networks)
        self._user_networks = networks
        #: name -> ``{"class": "module:QualName", "kwargs": {...}}`` of each user network:
        #: what the run folder's config.json records under "networks" to rebuild them.
        self.network_records: dict[str, dict[str, Any]] = {name: net.record() for name, net in networks.items()}
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.spec = spec
        self._check_kind(spec)
        if conditional and not spec.num_classes:
            raise UserError(
                f"conditional=true needs labelled data, but {spec.name or 'this dataset'!r} has no classes "
                "(num_classes is not set). Use conditional=false."
            )
        #: Classes the model is conditioned on; None when it is unconditional.
        self.num_classes: int | None = spec.num_classes if conditional else None
        #: True when ``cond`` may hold NULL_LABEL (classifier-free guidance).
        self.null_label = bool(null_label and conditional)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in CHECKED_METHODS:  # each family's definition (or its mixin's) checks its arguments
            fn = getattr(cls, name, None)
            if callable(fn) and not getattr(fn, "_checks_arguments", False):
                setattr(cls, name, _checking(fn, name))

    @contextmanager
    def modes(self, *, train: bool) -> Iterator[None]:
        """Every submodule in training (``train=True``) or eval mode for the block, each
        module's own mode restored after it (a caller's mixed modes too)."""
        saved = [(m, m.training) for m in self.modules()]
        self.train(train)
        try:
            yield
        finally:
            for m, mode in saved:
                m.training = mode

    def code_dim(self) -> int | None:
        """The width D of the codes (N, D) that ``encode`` returns and ``decode`` takes;
        None where the model has no code space or does not say."""
        return None

    def check_arguments(self, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """The checks run before each method of :data:`CHECKED_METHODS` (positional
        ``args`` and keyword ``kwargs`` as the caller gave them): data x (N, *shape)
        (:meth:`check_data`); ``sample``'s count n, a whole number >= 0; ``decode``'s codes
        (N, :meth:`code_dim`); ``interpolate``'s x1 and x2, one example each ((*shape) or
        (1, *shape)), and its steps >= 1; ``complete``'s mask, (N, *shape) or (*shape)."""
        where = f"{type(self).registered_name or type(self).__name__}.{method}"
        if method in DATA_METHODS:
            x = _argument(args, kwargs, 0, "x")
            self.check_data(x, method)
            if method == "complete":
                known = _argument(args, kwargs, 1, "known")
                shape = tuple(self.spec.shape)
                if not isinstance(known, torch.Tensor) or tuple(known.shape) not in (tuple(x.shape), shape):
                    got = tuple(known.shape) if isinstance(known, torch.Tensor) else type(known).__name__
                    raise UserError(f"{where} takes known as a bool tensor of x's shape {tuple(x.shape)} or of one example's {shape}; got {got}.")
        elif method == "sample":
            n = _argument(args, kwargs, 0, "n")
            if not _is_whole(n) or n < 0:
                raise UserError(f"{where} takes n, the number of examples, as a whole number >= 0; got {n!r}.")
        elif method == "decode":
            z, dim = _argument(args, kwargs, 0, "z"), self.code_dim()
            if not isinstance(z, torch.Tensor):
                raise UserError(f"{where} takes codes z as a torch.Tensor (N, {dim or 'D'}); got a {type(z).__name__}.")
            if z.dim() != 2 or (dim is not None and z.shape[1] != dim):
                raise UserError(f"{where} takes codes z of shape (N, {dim or 'D'}) (what encode returns); got {tuple(z.shape)}.")
        elif method == "interpolate":
            shape = tuple(self.spec.shape)
            for i, label in enumerate(("x1", "x2")):
                x = _argument(args, kwargs, i, label)
                if not isinstance(x, torch.Tensor) or tuple(x.shape) not in (shape, (1, *shape)):
                    got = tuple(x.shape) if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
                    raise UserError(f"{where} takes {label} as one example, a tensor {shape} or {(1, *shape)}; got {got}.")
                self.check_data(x.reshape(1, *shape), method)
            steps = _argument(args, kwargs, 2, "steps", 8)
            if not _is_whole(steps) or steps < 1:
                raise UserError(f"{where} takes steps, the points along the path, as a whole number >= 1; got {steps!r}.")

    def may_read_values(self, x: torch.Tensor) -> bool:
        """Whether a check of ``x``'s values (a host read) may run: in eval mode, on a
        non-empty tensor, and not while traced by torch.compile, captured in a CUDA graph or
        under a torch.func transform (vmap, grad: the applications score through vmap).
        :meth:`check_data` and the families' own value checks ask it."""
        if self.training or x.numel() == 0 or torch.compiler.is_compiling():
            return False
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return False
        return torch._C._functorch.maybe_get_level(x) == -1

    def check_data(self, x: Any, method: str = "this method") -> None:
        """Refuse, with one :class:`UserError`, data ``x`` that is not (N, *spec.shape).

        Every capability method taking data (:data:`DATA_METHODS`) calls it first. In eval
        mode (``model.eval()``: the evaluator, the command line, the applications) it also
        checks the values: finite, and for binary data in [0, 1], for discrete data whole
        numbers in 0..num_levels-1, for tokens whole numbers in 0..vocab_size-1. That needs one host sync, so it is
        skipped in training mode (the training step, whose batches the data layer checked)
        and while traced, captured in a CUDA graph or under a torch.func transform (vmap, grad).
        """
        spec = self.spec
        model = type(self).registered_name or type(self).__name__
        where = f"{model}.{method}"
        want = f"(N, {', '.join(str(d) for d in spec.shape)})"
        if not isinstance(x, torch.Tensor):
            raise UserError(f"{where} takes x as a torch.Tensor {want}, got a {type(x).__name__}.")
        if tuple(x.shape[1:]) != tuple(spec.shape) or x.dim() != len(spec.shape) + 1:
            raise UserError(
                f"{where} takes x of shape {want}: N examples of the data's shape {tuple(spec.shape)}; got {tuple(x.shape)}."
            )
        if not self.may_read_values(x):
            return
        if x.is_floating_point() or x.is_complex():
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                raise UserError(f"{where}: x holds {bad} NaN or infinite value(s) of {x.numel()}; data must be finite.")
        if spec.kind == "binary":
            low, high, accepted = 0, 1, "binary data takes values in [0, 1] (0 and 1, or probabilities)"
        elif spec.kind == "discrete":
            assert spec.num_levels is not None
            low, high, accepted = 0, spec.num_levels - 1, f"discrete data takes levels 0..{spec.num_levels - 1}"
        elif spec.kind == "tokens":
            assert spec.vocab_size is not None
            low, high, accepted = 0, spec.vocab_size - 1, f"token data takes ids 0..{spec.vocab_size - 1}"
        else:
            return  # continuous (noisy inputs of a denoiser may leave [0, 1]) and real data: any finite value
        lo, hi = (x.to(torch.uint8) if x.dtype == torch.bool else x).aminmax()
        # Levels and ids are whole numbers: 1.5 would be truncated by one model and rounded
        # by another, each scoring a value that is not the data's. (Binary data keeps its
        # probabilities: the VAEs' Bernoulli terms take grey values as soft targets.)
        whole = spec.kind != "binary" and x.is_floating_point()
        frac = (x - x.round()).abs().amax() if whole else lo.new_zeros(())
        lo, hi, frac = (float(v) for v in torch.stack([lo.double(), hi.double(), frac.double()]).tolist())
        if lo < low or hi > high:
            raise UserError(f"{where}: {accepted}; x holds values from {lo:g} to {hi:g}.")
        if frac > 0:
            raise UserError(f"{where}: {accepted}, whole numbers; x holds a value {frac:g} away from the nearest one.")

    def _check_kind(self, spec: DataSpec) -> None:
        if spec.kind in self.data_kinds:
            return
        name = type(self).registered_name or type(self).__name__
        takers = [n for n in MODELS.names() if spec.kind in getattr(MODELS.get(n), "data_kinds", ())]
        others = f" Models for {spec.kind} data: {', '.join(takers)}." if takers else ""
        raise UserError(
            f"the {name} model takes {_or_list(self.data_kinds)} data; {spec.name or 'this dataset'!r} holds {spec.kind} data.{others}"
        )

    # -- user networks ----------------------------------------------------------------
    @classmethod
    def check_network_names(cls, networks: Mapping[str, object]) -> None:
        """One :class:`UserError` for a name this family does not let the user replace
        (listing those it does), or a value that is no :func:`deepgen.network` spec."""
        name = cls.registered_name or cls.__name__
        accepted = list(cls.replaceable_networks)
        for key, value in networks.items():
            if key not in cls.replaceable_networks:
                takes = f"lets you replace {', '.join(accepted)}" if accepted else "lets you replace none of its networks"
                raise UserError(f"the {name} model has no network {key!r} to replace: it {takes}.")
            if not isinstance(value, Network):
                what = value.__name__ if isinstance(value, type) else type(value).__name__
                raise UserError(
                    f"{key}= takes deepgen.network(...), got {what}: write {key}=deepgen.network({what}, **kwargs) "
                    "(a class and its constructor arguments) or deepgen.network(module, **kwargs) (a built module and "
                    "the arguments that built it), so that the run folder records how to rebuild it."
                )

    def replaceable(self, name: str, default: Callable[[], nn.Module]) -> nn.Module:
        """The user's network ``name`` when one was given, else ``default()`` (the family's own).

        A user's module is called once on :meth:`network_io`'s small batch of zeros (eval
        mode, no grad), so that an output of the wrong shape is one :class:`UserError` now.
        """
        if name not in self.replaceable_networks:
            raise ValueError(f"{type(self).__name__} builds {name!r} with replaceable() but does not declare it in replaceable_networks")
        user = self._user_networks.pop(name, None)
        if user is None:
            return default()
        module = user.build()
        inputs, expected = self.network_io(name, 2)
        model = type(self).registered_name or type(self).__name__
        check_network(module, name, model, user.path, self.replaceable_networks[name], inputs, expected)
        return module

    def network_io(self, name: str, n: int) -> tuple[tuple[torch.Tensor, ...], Shape | tuple[Shape, ...]]:
        """For replaceable network ``name``: inputs of a batch of ``n`` (zeros, as the
        family calls the network: no labels for an unconditional model) and the output
        shape its own network returns (None: any size; a tuple of shapes: a tuple)."""
        raise NotImplementedError(f"{type(self).__name__} declares replaceable networks but no network_io")

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
        cond: torch.Tensor | int | None = None,
        mean: bool = False,
    ) -> torch.Tensor:
        """``n`` new examples (n, *spec.shape) in the data's space.

        ``cond``: labels (n,) (or one label for all) for conditional models; refused by
        unconditional ones (one UserError, :meth:`labels`). ``mean=True`` returns the mean of the output distribution
        instead of a draw from it, where the family has one (:meth:`has_output_mean`).
        """
        raise NotImplementedError

    @classmethod
    def has_output_mean(cls) -> bool:
        """True when ``sample(mean=True)`` is the mean of an output distribution, not a draw
        (:attr:`output_mean`, or, where the family does not declare it, whether the model
        has the :class:`ReconstructionNLL` capability)."""
        if cls.output_mean is not None:
            return cls.output_mean
        return issubclass(cls, ReconstructionNLL)

    def likelihood_info(self) -> Likelihood | None:
        """What ``log_prob`` computes; None for a model without one. Every model with the
        :class:`LogProb` capability overrides this (the conformance suite checks it)."""
        return None

    # -- labels -----------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        """True when the model takes class labels (``num_classes`` is set)."""
        return self.num_classes is not None

    def labels(self, cond: torch.Tensor | int | Sequence[int] | None, n: int) -> torch.Tensor | None:
        """Labels for ``n`` examples as int64 (n,) on the model's device; None when unconditional.

        ``cond``: (n,) labels, or one label for all n. An unconditional model given labels
        raises one :class:`UserError`, and so does a conditional model given none (unless it
        declares ``null_label``: then every example gets :data:`NULL_LABEL`); labels outside
        0..C-1 (and NULL_LABEL where accepted) are refused.
        """
        if self.num_classes is None:
            if cond is not None:
                # Labels given to an unconditional model were silently ignored: samples that
                # looked conditional were not.
                name = type(self).registered_name or type(self).__name__
                raise UserError(f"this {name} is unconditional: it takes no labels (cond=). "
                                "Train it with conditional=true for class-conditional outputs.")
            return None
        c = self.num_classes
        if cond is None:
            if self.null_label:
                return torch.full((n,), NULL_LABEL, dtype=torch.long, device=self.device)
            name = type(self).registered_name or type(self).__name__
            raise UserError(f"this {name} is conditional (conditional=true): pass labels 0..{c - 1} of shape ({n},) as cond=.")
        y = torch.as_tensor(cond, device=self.device).reshape(-1)
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise UserError(f"labels must be integers 0..{c - 1}, got a {y.dtype} tensor.")
        y = y.long()
        if y.numel() == 1 and n != 1:
            y = y.expand(n)
        if y.numel() != n:
            raise UserError(f"{y.numel()} labels given for {n} examples; pass one label or {n}.")
        low = NULL_LABEL if self.null_label else 0
        # A range check is a host sync: it runs here, outside the training step (loss()
        # uses one_hot/label_index on batch labels the data layer already checked).
        if y.numel() and (int(y.min()) < low or int(y.max()) >= c):
            accepted = f"0..{c - 1}" + (f" or {NULL_LABEL} (no label)" if self.null_label else "")
            raise UserError(f"labels must be in {accepted}; got values from {int(y.min())} to {int(y.max())}.")
        return y

    def one_hot(self, cond: torch.Tensor | int | None, n: int, *, checked: bool = True) -> torch.Tensor | None:
        """Labels -> float one-hot (n, C) (NULL_LABEL -> a row of zeros); None when unconditional.

        ``checked=False`` skips :meth:`labels`' checks (no host sync: for batch labels
        inside ``loss``); a conditional model still refuses missing labels.
        """
        y = self._label_tensor(cond, n, checked)
        if y is None:
            return None
        assert self.num_classes is not None
        hot = nn.functional.one_hot(y.clamp_min(0), self.num_classes).to(self.dtype)
        if self.null_label:
            hot = hot * (y >= 0).unsqueeze(1)
        return hot

    def label_index(self, cond: torch.Tensor | int | None, n: int, *, checked: bool = True) -> torch.Tensor | None:
        """Labels -> indices (n,) into an embedding of C + 1 rows (NULL_LABEL -> C); None when unconditional."""
        y = self._label_tensor(cond, n, checked)
        if y is None:
            return None
        assert self.num_classes is not None
        return torch.where(y < 0, torch.full_like(y, self.num_classes), y)

    def _label_tensor(self, cond: torch.Tensor | int | None, n: int, checked: bool) -> torch.Tensor | None:
        if self.num_classes is None and not checked:  # batch labels inside loss(): unused
            return None
        if checked or cond is None or self.num_classes is None:
            return self.labels(cond, n)
        y = torch.as_tensor(cond, device=self.device).reshape(-1).long()
        return y.expand(n) if y.numel() == 1 and n != 1 else y

    # -- helpers ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point parameters (float32 unless converted)."""
        for p in self.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
        return torch.get_default_dtype()

    @classmethod
    def rebuilt_config(cls, config: ModelConfig, spec: DataSpec) -> ModelConfig:
        """The config a saved run is rebuilt with (``training.checkpoint.build_model``, for
        load and resume): ``config`` as saved, for a family to put back settings that an
        older deepgen ignored for this data and a newer one refuses, so that such a run
        still loads (the rebuilt model is the same; nothing its weights depend on changes).
        Default: unchanged."""
        return config

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        """Settings that cover the model's structure for data ``spec``: the conformance
        suites build the model once per variant. Structurally different networks (e.g.
        ``{"network": "mlp"}`` and ``{"network": "conv"}`` for images), at sizes small
        enough for a test (a 10M-parameter default may declare a 2-layer variant of the
        same architecture). Default: the defaults alone."""
        return [{}]

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
    """``log_prob(x, cond=None)`` -> (N,) log-likelihood in nats; what it is (exact, a bound,
    a loss; discrete or density) is the model's :meth:`GenerativeModel.likelihood_info`."""

    def log_prob(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class HasELBO(Protocol):
    """``elbo(x, cond=None)`` -> (N,) evidence lower bound in nats."""

    def elbo(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Encoder(Protocol):
    """``encode(x, cond=None)`` -> (N, latent_dim) codes (the posterior mean for VAEs; z for flows, flattened)."""

    def encode(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Decoder(Protocol):
    """``decode(z, cond=None)`` -> (N, *shape), the mean of the output distribution (or the inverse map)."""

    def decode(self, z: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Reconstructor(Protocol):
    """``reconstruct(x, cond=None)`` -> (N, *shape), the output mean for input ``x``."""

    def reconstruct(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class HasHistograms(Protocol):
    """``histograms()`` -> {name: values (any shape)} to plot (e.g. WGAN critic weights).

    The trainer writes them to TensorBoard at each log point; the picture callback draws
    ``histograms.png`` with the sample pictures.
    """

    def histograms(self) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class ReconstructionNLL(Protocol):
    """``reconstruction_nll(x, cond=None)`` -> (N,) nats: -log p(x | code of x) under the output distribution."""

    def reconstruction_nll(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Interpolator(Protocol):
    """``interpolate(x1, x2, steps, cond=None)`` -> (steps, *shape) decoded along the latent path."""

    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Invertible(Protocol):
    """An invertible map (normalizing flows): ``forward(x, cond=None) -> (z, log_det)`` with
    z (N, *zshape) holding as many values per example as x (N, *shape), and log_det (N,)
    = log |det dz/dx| (float32 or wider); ``inverse(z, cond=None) -> x``.

    The capability conformance suite checks, in float64, that ``inverse(forward(x)) = x``
    to 1e-5 and that ``log_det`` equals log |det J| of autograd's Jacobian.
    """

    def forward(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def inverse(self, z: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Completion(Protocol):
    """``complete(x, known, generator=None, cond=None)`` -> (N, *shape): the positions where
    ``known`` (bool, (N, *shape) or (*shape)) is False are drawn in the model's order given
    the known ones (a text prompt, an image's upper half); known positions stay as in x."""

    def complete(
        self, x: torch.Tensor, known: torch.Tensor, *, generator: torch.Generator | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor: ...


@runtime_checkable
class Autoregressive(Protocol):
    """p(x) = prod_i p(x_{o(i)} | x_{o(<i)}) in an order o.

    ``ordering()`` -> (T,) int64: the flat index into x (N, *shape) of position i.
    ``position_outputs(x, cond=None)`` -> (N, T, ...): the network's output (logits or
    distribution parameters) for position i, which may depend only on positions < i.
    The conformance suite checks that output i has zero gradient (or, for token data, no
    change) with respect to inputs at positions >= i.
    """

    def ordering(self) -> torch.Tensor: ...

    def position_outputs(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class CachedDecoding(Protocol):
    """``cached_position_outputs(x, cond=None)`` -> (N, T, ...): the same outputs as
    :class:`Autoregressive` ``.position_outputs``, computed one position at a time with the
    sampler's cache (a key/value cache, a PixelCNN's cached activations). The conformance
    suite checks that both agree."""

    def cached_position_outputs(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Continuation(Protocol):
    """``generate_ids(prompt, length, generator=None, cond=None)`` -> (N, length): token ids
    continuing ``prompt`` (N, P) past the model's own context where needed (a sliding
    window); the prompt's ids are kept as the first P."""

    def generate_ids(
        self, prompt: torch.Tensor, length: int, *, generator: torch.Generator | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor: ...


@runtime_checkable
class DataInit(Protocol):
    """``data_init(batch)``: a data-dependent initialisation (Glow's actnorm, Kingma &
    Dhariwal 2018, sec. 3.1) that the trainer calls once before the first step of a new
    run, on the first ``batch_size`` training examples, and never on resume (the weights
    it set are in the checkpoint)."""

    def data_init(self, batch: Batch) -> None: ...


CAPABILITIES: dict[str, type] = {
    "log_prob": LogProb,
    "elbo": HasELBO,
    "encode": Encoder,
    "decode": Decoder,
    "reconstruct": Reconstructor,
    "reconstruction_nll": ReconstructionNLL,
    "interpolate": Interpolator,
    "invertible": Invertible,
    "complete": Completion,
    "autoregressive": Autoregressive,
    "cached_decoding": CachedDecoding,
    "generate_ids": Continuation,
    "data_init": DataInit,
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


__all__ = [
    "CAPABILITIES",
    "KINDS",
    "NULL_LABEL",
    "GenerativeModel",
    "Likelihood",
    "LossOutput",
    "ModelConfig",
    "OptimizerSpec",
    "ParamGroup",
    "Phase",
    "all_parameters",
]

