"""Optimizers, learning-rate schedules and weight averages (bottom layer; torch only).

What a phase asks for (:class:`OptimizerSpec`, optionally split into :class:`ParamGroup`
s), how it becomes a ``torch.optim`` optimizer (:func:`build_optimizer`: fused on CUDA,
foreach elsewhere, capturable for CUDA graphs), the lr factor over a run
(:func:`schedule_factor`), and the exponential moving average of weights with diffusers'
warm-up (:class:`EMA`). The trainer uses all of it; so does the training of the feature
networks in ``metrics/`` (which may not import ``training/``), so it lives here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .config import Config


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
class ParamGroup:
    """Some of a phase's parameters with their own weight decay (None: the phase's).

    nanoGPT's AdamW split is two groups: matrices decayed, biases and norm gains not
    (:func:`decay_groups`).
    """

    params: list[nn.Parameter]
    weight_decay: float | None = None


def decay_groups(module: nn.Module, weight_decay: float) -> list[ParamGroup]:
    """nanoGPT's split (``configure_optimizers``): every parameter with 2 or more dimensions
    (weights of linear layers, convolutions, embeddings) decays; biases and norm gains
    (1-d) do not. Returns ``[decayed, not decayed]``, empty groups left out."""
    params = [p for p in module.parameters() if p.requires_grad]
    decayed = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return [g for g in (ParamGroup(decayed, weight_decay), ParamGroup(rest, 0.0)) if g.params]


# Optimizer flags that say how a step is computed, not what it computes: a checkpoint keeps
# the moments and hyperparameters, the running optimizer keeps its own implementation.
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def build_optimizer(
    spec: OptimizerSpec,
    params: Sequence[nn.Parameter] | Sequence[ParamGroup],
    device: torch.device,
    graph: bool = False,
) -> torch.optim.Optimizer:
    """A torch optimizer from a phase's spec: fused Adam on CUDA, foreach elsewhere.

    ``params``: parameters, or :class:`ParamGroup` s (one torch param group each, with its
    own weight decay). ``graph``: the step will be captured in a CUDA graph, so the
    optimizer keeps its step count on the device (``capturable``) and its lr in a device
    tensor that the schedule updates in place (SGD has no capturable mode: its float lr is
    fixed at capture).
    """
    groups = list(params)
    if groups and isinstance(groups[0], ParamGroup):
        torch_groups: list[dict[str, Any]] = [
            {"params": g.params, "weight_decay": spec.weight_decay if g.weight_decay is None else g.weight_decay}
            for g in groups  # type: ignore[union-attr]
        ]
    else:
        torch_groups = [{"params": groups, "weight_decay": spec.weight_decay}]
    fast: dict[str, Any] = {"fused": True} if device.type == "cuda" else {"foreach": True}
    lr: float | torch.Tensor = torch.tensor(spec.lr, device=device) if graph and spec.name != "sgd" else spec.lr
    if graph:
        fast["capturable"] = True
    if spec.name in ("adam", "adamw"):
        cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
        return cls(torch_groups, lr=lr, betas=tuple(spec.betas), eps=spec.eps, **fast)
    if spec.name == "rmsprop":
        capturable = {"capturable": True} if graph else {}
        return torch.optim.RMSprop(torch_groups, lr=lr, eps=spec.eps, momentum=spec.momentum, foreach=True, **capturable)
    return torch.optim.SGD(torch_groups, lr=spec.lr, momentum=spec.momentum, foreach=True)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr: in place for a tensor lr (a captured step reads that tensor).

    With several groups sharing one tensor lr, the tensor is filled once per group (the
    same value), which is harmless.
    """
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``opt.state_dict()`` with every lr as a float (a checkpoint holds no device lr)."""
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
    return sd


def load_optimizer_state(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """Load saved moments and hyperparameters, keeping ``opt``'s implementation.

    ``Optimizer.load_state_dict`` takes the saved groups whole, flags included, so a
    checkpoint written by a fused or captured GPU run would make a CPU run capturable (an
    error) and turn a graph's tensor lr into a float (the graph would never see the
    schedule). Here the running optimizer's flags and lr object are kept; the step counts
    move where the implementation expects them.
    """
    kept = [({k: g[k] for k in _IMPLEMENTATION_KEYS if k in g}, g["lr"]) for g in opt.param_groups]
    opt.load_state_dict(sd)
    for group, (flags, lr) in zip(opt.param_groups, kept):
        saved_lr = float(group["lr"])
        group.update(flags)
        if isinstance(lr, torch.Tensor):
            lr.fill_(saved_lr)
            group["lr"] = lr
        else:
            group["lr"] = saved_lr
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            state = opt.state.get(p, {})
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(device=p.device if on_device else "cpu", dtype=torch.float32)


Schedule = Literal["constant", "cosine", "linear", "iwae"]

# Burda et al. 2016, sec. 5: stage i = 0..7 trains 3^i epochs at lr 1e-3 * 10^(-i/7), 3,280
# epochs in all; the "iwae" schedule keeps those stages as fractions of any run's length.
_IWAE_STAGES = tuple(3**i for i in range(8))


def schedule_factor(schedule: Schedule | str, warmup_steps: int, step: int, total: int) -> float:
    """Multiplier of the base lr at ``step`` (0-based) of ``total``: a linear warm-up over
    ``warmup_steps``, then constant, cosine (Loshchilov & Hutter 2017), linear decay to 0,
    or ``iwae``: the IWAE paper's staircase, 10^(-i/7) in stage i = 0..7, stage i lasting
    3^i / 3,280 of the steps after the warm-up (its 3^i epochs of 3,280)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total <= warmup_steps:
        return 1.0
    t = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "iwae":
        done, units = 0, t * sum(_IWAE_STAGES)
        for i, length in enumerate(_IWAE_STAGES):
            done += length
            if units < done:
                return 10.0 ** (-i / 7)
        return 10.0 ** (-(len(_IWAE_STAGES) - 1) / 7)
    return 1.0 - t


def ema_decay(decay: float, step: int, warmup_power: float = 0.0) -> float:
    """The decay of the EMA update that follows ``step`` earlier updates (0 at the first).

    ``warmup_power = 0``: the fixed ``decay``. Otherwise diffusers' EMAModel warm-up
    (``use_ema_warmup``, inv_gamma = 1): ``min(decay, 1 - (1 + step) ** -power)``, which
    starts at 0 (the average is the weights themselves) and approaches ``decay``; power
    2/3 reaches 0.999 at about 31,000 steps, 3/4 at about 10,000 (Karras et al.'s advice
    quoted in diffusers' docs). Step 0 always gives 0.
    """
    if warmup_power <= 0:
        return decay
    if step <= 0:
        return 0.0
    return min(decay, 1.0 - (1.0 + step) ** -warmup_power)


class EMA:
    """An exponential moving average of a model's weights (a copy kept in eval mode).

    ``warmup_power`` > 0 ramps the decay up as :func:`ema_decay` says; the caller passes
    the number of updates so far to :meth:`update`.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_power: float = 0.0) -> None:
        self.decay = decay
        self.warmup_power = warmup_power
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average at ``model``'s weights and buffers, in place: whoever holds
        :attr:`model` (an evaluation, a picture callback) keeps holding the live copy."""
        self.model.load_state_dict(model.state_dict())

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Move the average towards ``model``'s weights. ``step``: the number of updates
        before this one (0 at the first, which with warm-up copies the weights); None: the
        fixed decay."""
        decay = ema_decay(self.decay, step if step is not None else 1 << 62, self.warmup_power)
        ema_p = [p for p in self.model.parameters() if p.dtype.is_floating_point]
        src_p = [p for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
