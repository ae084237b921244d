"""Frozen, typed configuration dataclasses.

Every config in deepgen (each model family's, the trainer's, the data's) subclasses
:class:`Config`. A config

* checks the type of every field and then its own invariants at construction
  (``validate``), so a bad value fails where it is written, not deep inside training;
* round-trips through JSON (``to_dict`` / ``from_dict``; tuples come back as tuples); a
  mapping ``from_dict`` cannot build (a missing required setting, an unknown key, not a
  mapping) is one :class:`~deepgen.errors.UserError` naming the config, the key(s) and
  every accepted setting, never a raw ``TypeError``;
* accepts ``key=value`` strings from the command line (``with_overrides``), parsing each
  value by the field's annotation; unknown keys and values of the wrong type are
  :class:`~deepgen.errors.UserError` s that list what is accepted.

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
``tuple[int, ...]``, ``tuple[float, ...]``, ``tuple[str, ...]`` and ``X | None`` of these.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import types
import typing
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from .errors import UserError, did_you_mean

C = TypeVar("C", bound="Config")

_NONE_WORDS = {"none", "null"}
_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"a tuple of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _python_scalar(value: Any) -> Any:
    """A NumPy scalar (np.int64(4), np.float32(1e-3), np.bool_(True): what ``np.arange`` and
    scikit-learn grids hand over) as the Python number it holds; anything else unchanged."""
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # `X | None`: X's own message says what is wrong
            return _coerce(value, options[0], where)
        for arg in options:
            try:
                return _coerce(value, arg, where)
            except UserError:
                pass
        raise UserError(f"{where} must be {_type_name(tp)}, got {value!r}.")
    if origin is Literal:
        if value not in get_args(tp):
            choices = [str(a) for a in get_args(tp)]
            raise UserError(f"{where} got {value!r}. {did_you_mean(str(value), choices)}")
        return value
    if origin is tuple:
        if type(value).__module__ == "numpy" and hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1:
            value = value.tolist()  # a NumPy vector (hidden=np.array([64, 64])): its Python items
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be {_type_name(tp)}, got {value!r}.")
        item_tp = get_args(tp)[0]
        return tuple(_coerce(v, item_tp, where) for v in value)
    value = _python_scalar(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}.")
        if not math.isfinite(value):
            # No setting means anything at NaN or +-inf; caught here, the message names the
            # setting rather than a divergence many steps later.
            raise UserError(f"{where} must be a finite number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}.")
        return value
    raise TypeError(f"config field type {tp!r} is not supported ({where})")


def _parse(text: str, tp: Any, where: str) -> Any:
    """Parse a command-line string into a value of annotation ``tp``."""
    s = text.strip()
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if s.lower() in _NONE_WORDS and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(s, arg, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(f"{where} must be {_type_name(tp)}, got {text!r}.")
    if origin is Literal:
        for choice in get_args(tp):
            if str(choice) == s:
                return choice
        raise UserError(f"{where} got {text!r}. {did_you_mean(s, [str(a) for a in get_args(tp)])}")
    if origin is tuple:
        inner = s.strip("()[] ")
        pieces = [q.strip() for q in inner.split(",")] if inner else []
        if pieces and not pieces[-1]:
            pieces.pop()  # one trailing comma: Python's 1-tuple, "(256,)"
        if any(not p for p in pieces):
            # "256,,3" was read as (256, 3): a value lost to a typo, silently.
            raise UserError(f"{where} must be {_type_name(tp)}, written as items separated by commas; got {text!r}, which has an empty item.")
        return tuple(_parse(p, get_args(tp)[0], where) for p in pieces)
    if tp is bool:
        if s.lower() in _TRUE_WORDS:
            return True
        if s.lower() in _FALSE_WORDS:
            return False
        raise UserError(f"{where} must be true or false, got {text!r}.")
    if tp is int:
        try:
            return int(s)
        except ValueError:
            raise UserError(f"{where} must be an integer, got {text!r}.") from None
    if tp is float:
        try:
            return float(s)
        except ValueError:
            raise UserError(f"{where} must be a number, got {text!r}.") from None
    if tp is str:
        return s
    raise TypeError(f"config field type {tp!r} is not supported ({where})")


_HINTS: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)`` of a config class, worked out once per class: it
    evaluates every field's annotation (a string here) on each call, most of the time that
    building a config took. Read only."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class of every config: typed, validated, frozen, JSON round-trippable."""

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            where = f"{type(self).__name__}.{f.name}"
            value = _coerce(getattr(self, f.name), hints[f.name], where)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Check invariants between fields; raise :class:`UserError` when one fails."""

    def check(self, condition: bool, message: str) -> None:
        """Raise a :class:`UserError` naming this config when ``condition`` is false."""
        if not condition:
            raise UserError(f"{type(self).__name__}: {message}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Field values as plain JSON-able Python values (tuples become lists in JSON)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def required_fields(cls) -> list[str]:
        """The fields without a default: every mapping given to :meth:`from_dict` needs them."""
        return [
            f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]

    @classmethod
    def accepted_settings(cls) -> str:
        """``"a (int, required), b (float) ..."``: the settings and their types, for messages."""
        hints = _type_hints(cls)
        required = set(cls.required_fields())
        return ", ".join(
            f"{f.name} ({_type_name(hints[f.name])}{', required' if f.name in required else ''})"
            for f in dataclasses.fields(cls) if f.init
        )

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """Build from a mapping of field names to values.

        Everything the mapping can get wrong is one :class:`UserError` naming this config:
        not a mapping, a key that is not a string or not a setting (with the closest
        names), a required setting missing (each one named, with every accepted setting and
        its type), a value of the wrong type, a failed invariant.
        """
        name = cls.__name__
        if not isinstance(values, Mapping):
            raise UserError(
                f"{name} is built from a mapping of settings to values, got {type(values).__name__} "
                f"{_short_repr(values)}. Accepted settings: {cls.accepted_settings()}."
            )
        names = cls.field_names()
        for key in values:
            if not isinstance(key, str):
                raise UserError(f"{name}: setting names are strings, got {key!r}. {did_you_mean(str(key), names)}")
            if key not in names:
                raise UserError(f"{name} has no setting {key!r}. {did_you_mean(key, names)}")
        missing = [n for n in cls.required_fields() if n not in values]
        if missing:
            raise UserError(
                f"{name} needs {'setting' if len(missing) == 1 else 'settings'} "
                f"{', '.join(repr(m) for m in missing)}, which {'has' if len(missing) == 1 else 'have'} no default. "
                f"Accepted settings: {cls.accepted_settings()}."
            )
        computed = {f.name for f in dataclasses.fields(cls) if not f.init}
        given = {k: v for k, v in values.items() if k not in computed}
        try:
            inspect.signature(cls).bind(**given)
        except TypeError as e:
            # The constructor refuses the mapping some other way (a subclass's own __init__):
            # still one message naming the config. Checked before
            # the call, so that a TypeError inside validate() (a bug) is not dressed up as one.
            raise UserError(
                f"{name} cannot be built from {_short_repr(given)}: {e}. Accepted settings: {cls.accepted_settings()}."
            ) from None
        built = cls(**given)
        hints = _type_hints(cls)
        for key in sorted(computed & set(values)):  # to_dict() writes them: fine when they agree
            if _coerce(values[key], hints[key], f"{name}.{key}") != getattr(built, key):
                raise UserError(
                    f"{name}.{key} is computed from the other settings ({getattr(built, key)!r} here), "
                    f"not set: got {values[key]!r}. Leave it out."
                )
        return built

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return self.from_dict({**own, **changes})

    def with_overrides(self: C, overrides: Mapping[str, str]) -> C:
        """A copy with ``key -> "text"`` overrides parsed by each field's type."""
        return self.replace(**self.parse_overrides(overrides))

    def parse_overrides(self, overrides: Mapping[str, str]) -> dict[str, Any]:
        """``key -> "text"`` overrides parsed by each field's type, not yet applied (nor the
        config validated with them); an unknown key or a bad value is a :class:`UserError`."""
        hints = _type_hints(type(self))
        names = self.field_names()
        parsed = {}
        for key, text in overrides.items():
            if key not in names:
                raise UserError(f"{type(self).__name__} has no setting {key!r}. {did_you_mean(str(key), names)}")
            if not isinstance(text, str):
                raise UserError(
                    f"{type(self).__name__}.{key}: with_overrides takes text (key=value from a command line), "
                    f"got {type(text).__name__} {_short_repr(text)}; use replace({key}=...) for a value."
                )
            parsed[key] = _parse(text, hints[key], f"{type(self).__name__}.{key}")
        return parsed

    def describe_fields(self) -> list[tuple[str, str, Any]]:
        """(name, type, current value) for each field; used by ``deepgen models``."""
        hints = _type_hints(type(self))
        return [(f.name, _type_name(hints[f.name]), getattr(self, f.name)) for f in dataclasses.fields(self)]


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """Split ``["a=1", "b=x"]`` into ``{"a": "1", "b": "x"}``; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r} (for example --set latent_dim=32).")
        out[key.strip()] = value
    return out


def split_overrides(
    overrides: Mapping[str, str], configs: Mapping[str, Config]
) -> dict[str, dict[str, str]]:
    """Route ``key=value`` overrides to the config that owns each key.

    ``configs`` maps a prefix (``"model"``, ``"train"``, ``"data"``) to a config. A key may
    carry a prefix (``train.epochs``); an unprefixed key goes to the one config that has a
    field of that name, and is an error when none or several do.
    """
    routed: dict[str, dict[str, str]] = {prefix: {} for prefix in configs}
    for key, value in overrides.items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in configs:
            routed[prefix][rest] = value
            continue
        owners = [p for p, cfg in configs.items() if key in cfg.field_names()]
        if not owners:
            every = sorted({n for cfg in configs.values() for n in cfg.field_names()})
            raise UserError(f"unknown setting {key!r}. {did_you_mean(key, every)}")
        if len(owners) > 1:
            raise UserError(
                f"setting {key!r} is ambiguous: write one of {', '.join(o + '.' + key for o in owners)}."
            )
        routed[owners[0]][key] = value
    return routed
