"""Bring your own networks: a user's ``nn.Module`` in place of a family's encoder, decoder,
generator or discriminator, recorded so that the run folder rebuilds it without pickle.

>>> enc = deepgen.network(MyEncoder, hidden=64)       # a class and its constructor arguments
>>> dec = deepgen.network(my_decoder, hidden=64)      # or an instance, with the arguments that built it
>>> model = deepgen.create_model("vae", ds, encoder=enc, decoder=dec, latent_dim=8)

A :class:`Network` is the class and keyword arguments that build the module (plus, when
an instance was given, that instance, used as it is). Each family declares the networks it
lets the user replace and what each must map (``GenerativeModel.replaceable_networks``:
name -> shapes); the model builds the user's module where it would build its own and calls
it once on a small batch of zeros, so that a wrong output shape is one :class:`UserError`
at creation, naming the shape expected and the shape returned.

The run folder's ``config.json`` records each one as ``{"class": "module:QualName",
"kwargs": {...}}`` (:meth:`Network.record`): the keyword arguments must be JSON values
(numbers, strings, booleans, None, lists and string-keyed dicts of them), and travel
through JSON at creation too (tuples arrive as lists), so the module built when the run
is reloaded is built exactly as the first one. The weights are submodules of the model,
in the same ``model.safetensors`` as every other weight. Reloading (:func:`from_record`)
imports the class by its module path and qualified name with :mod:`importlib` (code
already on the import path, never code from the run folder) and checks that it is an
``nn.Module`` class before calling it.
"""

from __future__ import annotations

import importlib
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError

#: An expected output shape: sizes, None where any size is accepted; a tuple output (a
#: discriminator's logits and features) is a tuple of these.
Shape = tuple[int | None, ...]


# -- the spec --------------------------------------------------------------------------------


def class_path(cls: type) -> str:
    """The importable name of a class: ``"package.module:Outer.Inner"``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON (tuples -> lists, NumPy scalars -> Python numbers); a
    :class:`UserError` naming ``where`` for anything JSON cannot hold."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        if not math.isfinite(v):
            raise UserError(f"{where} is {v}, which JSON cannot hold; pass a finite number.")
        return v
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{where} has the key {k!r}; JSON objects have string keys.")
            out[k] = _json_value(v, f"{where}[{k!r}]")
        return out
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    raise UserError(
        f"{where} is a {type(value).__name__} ({text}), which config.json cannot record. A custom network's "
        "constructor arguments must be numbers, strings, booleans, None, or lists and dicts of them, so that the "
        "run folder can rebuild it; pass a setting the constructor turns into the object (e.g. activation='relu')."
    )


def _state_shapes(module: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]] | None:
    """name -> (shape, dtype) of a module's state; None while it has lazy parameters."""
    out = {}
    for name, t in module.state_dict().items():
        if isinstance(t, nn.parameter.UninitializedTensorMixin):
            return None
        out[name] = (tuple(t.shape), t.dtype)
    return out


@dataclass(frozen=True, eq=False)
class Network:
    """A user's network: the ``nn.Module`` class, the JSON keyword arguments that build it
    and, when the user gave a built module, that ``instance`` (used as it is, weights and
    all). Make one with :func:`network`; a run folder rebuilds one with :func:`from_record`."""

    cls: type[nn.Module]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    instance: nn.Module | None = None

    @property
    def path(self) -> str:
        """The class's importable name, ``"module:QualName"``."""
        return class_path(self.cls)

    def build(self) -> nn.Module:
        """The module: the instance given, else ``cls(**kwargs)``."""
        if self.instance is not None:
            return self.instance
        try:
            return self.cls(**self.kwargs)
        except Exception as e:  # the user's constructor: say which call failed, and how
            raise UserError(f"building the custom network {self.path}(**{self.kwargs}) failed: {type(e).__name__}: {e}") from e

    def record(self) -> dict[str, Any]:
        """What ``config.json`` keeps: ``{"class": "module:QualName", "kwargs": {...}}``."""
        return {"class": self.path, "kwargs": dict(self.kwargs)}


def network(target: type[nn.Module] | nn.Module, /, **kwargs: Any) -> Network:
    """A user's network for :func:`deepgen.create_model`, recorded so that a run folder rebuilds it.

    ``network(MyEncoder, hidden=64)``: the module is ``MyEncoder(hidden=64)``, built by the
    model where it builds its own. ``network(my_encoder, hidden=64)``: the instance is used
    as it is (its weights included), and ``hidden=64`` are the arguments that built it,
    which the run folder rebuilds it with: ``MyEncoder(hidden=64)`` is built once here (the
    random streams left as they were) to check that it has the instance's parameters.

    The class must be importable by name (defined at the top level of a module, not inside
    a function); the arguments must be JSON values (numbers, strings, booleans, None, lists
    and dicts of them; tuples arrive as lists). Anything else is a :class:`UserError` here.
    A class defined in the script being run (``__main__``) works, with a warning: a run
    folder then reloads only from that script, not with ``deepgen sample``.
    """
    instance = target if isinstance(target, nn.Module) else None
    cls = type(target) if instance is not None else target
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"deepgen.network takes an nn.Module class or instance, got {type(target).__name__} ({target!r:.60}).")
    path = class_path(cls)
    if "<locals>" in cls.__qualname__:
        raise UserError(
            f"the custom network class {path} is defined inside a function, so a run folder could not import it "
            "to rebuild the model. Define it at the top level of a module."
        )
    if cls.__module__ == "__main__":
        warnings.warn(
            f"the custom network class {cls.__qualname__} is defined in the script being run (__main__): its run folder "
            "will reload only from this script. Put the class in a module of its own (on PYTHONPATH) to load the run "
            "anywhere, e.g. with `deepgen sample`.",
            UserWarning,
            stacklevel=2,
        )
    plain = {k: _json_value(v, f"the argument {k!r} of {cls.__qualname__}") for k, v in kwargs.items()}
    spec = Network(cls, plain, instance)
    if instance is not None:
        _check_rebuilds(spec)
    return spec


def _check_rebuilds(spec: Network) -> None:
    """``cls(**kwargs)`` has the instance's parameters and buffers (names, shapes, dtypes)."""
    assert spec.instance is not None
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the streams as they were
        try:
            fresh = spec.cls(**spec.kwargs)
        except Exception as e:  # noqa: BLE001 - the user's constructor, reported with how to fix it
            raise UserError(
                f"the custom network {spec.path} cannot be rebuilt from the arguments given: {spec.cls.__qualname__}"
                f"(**{dict(spec.kwargs)}) raised {type(e).__name__}: {e}. Pass the constructor arguments that built the "
                f"instance: deepgen.network(instance, name=value, ...)."
            ) from None
    given, rebuilt = _state_shapes(spec.instance), _state_shapes(fresh)
    if given is None or rebuilt is None or given == rebuilt:
        return
    differ = sorted(set(given) ^ set(rebuilt)) or sorted(k for k in given if given[k] != rebuilt[k])
    raise UserError(
        f"{spec.cls.__qualname__}(**{dict(spec.kwargs)}) builds other parameters than the instance given "
        f"(first difference: {differ[0]!r}), so the run folder could not rebuild it. Pass the constructor arguments "
        "that built the instance: deepgen.network(instance, name=value, ...)."
    )


# -- reloading -------------------------------------------------------------------------------


def import_class(path: str, role: str) -> type[nn.Module]:
    """The class ``"module:QualName"`` names, imported with importlib; a :class:`UserError`
    saying how to make it importable when it is not, or when it is no ``nn.Module`` class."""
    module_name, sep, qualname = path.partition(":")
    if not (sep and module_name and qualname):
        raise UserError(f"the run's config.json records the custom {role} as {path!r}, not 'module:QualName'; it is corrupt.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UserError(
            f"cannot import the class {path} of the run's custom {role}: {e}. Reloading the run imports it by that "
            f"name: install the package that holds it, or add the folder that holds {module_name.replace('.', '/')}.py "
            "to PYTHONPATH."
        ) from None
    except Exception as e:  # noqa: BLE001 - an error inside the user's module, reported as what it is
        raise UserError(f"cannot import the class {path} of the run's custom {role}: importing {module_name} raised {type(e).__name__}: {e}") from None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            break
    if obj is None:
        if module_name == "__main__":
            hint = (
                "It was defined in the script that trained the run (__main__), which cannot be imported from here. Move the "
                "class into a module of its own on PYTHONPATH (import it from there in the script) and set 'class' in the "
                "run's config.json to 'module:" + qualname + "'; the weights stay valid."
            )
        else:
            hint = f"{module_name} no longer defines it: restore the class, or set 'class' in the run's config.json to where it lives now."
        raise UserError(f"cannot import the class {path} of the run's custom {role}. {hint}")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UserError(f"the run's config.json records {path} as its custom {role}, which is not an nn.Module class; it is corrupt.")
    return obj


def from_record(role: str, record: Any) -> Network:
    """The :class:`Network` a ``config.json`` record (:meth:`Network.record`) describes,
    its class imported (:func:`import_class`); not built yet."""
    if not (isinstance(record, Mapping) and isinstance(record.get("class"), str) and isinstance(record.get("kwargs", {}), Mapping)):
        raise UserError(f"the run's config.json has a 'networks' entry for {role!r} that is not {{class, kwargs}}; it is corrupt.")
    return Network(import_class(record["class"], role), dict(record.get("kwargs", {})))


# -- the shape check -------------------------------------------------------------------------


def _is_tuple_shape(expected: Any) -> bool:
    return bool(expected) and all(isinstance(s, tuple) for s in expected)


def _show(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _show_expected(expected: Any) -> str:
    return "(" + ", ".join(_show(s) for s in expected) + ")" if _is_tuple_shape(expected) else _show(expected)


def _show_got(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return _show(tuple(out.shape))
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_show_got(o) for o in out) + ")"
    return f"a {type(out).__name__}"


def _fits(out: Any, expected: Any) -> bool:
    if _is_tuple_shape(expected):
        return isinstance(out, (tuple, list)) and len(out) == len(expected) and all(_fits(o, e) for o, e in zip(out, expected))
    if not isinstance(out, torch.Tensor) or out.dim() != len(expected):
        return False
    return all(e is None or s == e for s, e in zip(out.shape, expected))


def check_network(
    module: nn.Module, role: str, model: str, path: str, signature: str, inputs: Sequence[torch.Tensor | None], expected: Shape | tuple[Shape, ...]
) -> None:
    """Call ``module(*inputs)`` once (eval mode, no grad; each submodule's mode restored)
    and check its output against ``expected``: one :class:`UserError` saying the shapes
    expected and returned, or the error the call raised, with the ``signature`` (the
    family's words for what the network maps) to fix it by."""
    modes = [(m, m.training) for m in module.modules()]
    shown = ", ".join("None" if t is None else _show(tuple(t.shape)) for t in inputs)  # None: an optional input left out
    what = f"the custom {role} of {model} ({path}) must map {signature}"
    try:
        module.eval()
        with torch.no_grad():
            out = module(*inputs)
    except Exception as e:  # noqa: BLE001 - the user's forward: reported with the contract it must meet
        raise UserError(f"{what}; called on a batch of inputs of shapes {shown} it raised {type(e).__name__}: {e}") from None
    finally:
        for m, mode in modes:
            m.training = mode
    if not _fits(out, expected):
        raise UserError(f"{what}; called on inputs of shapes {shown} it returned {_show_got(out)}, expected {_show_expected(expected)}.")
