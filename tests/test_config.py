"""Configs: type checks at construction, JSON round trip, key=value overrides, routing."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Literal

import pytest

from deepgen.config import Config, parse_assignments, split_overrides
from deepgen.data import DataConfig
from deepgen.errors import UserError
from deepgen.training import TrainConfig


@dataclass(frozen=True)
class Toy(Config):
    width: int = 4
    rate: float = 0.5
    name: str = "a"
    flag: bool = False
    mode: Literal["x", "y"] = "x"
    sizes: tuple[int, ...] = (8, 4)
    limit: float | None = None

    def validate(self) -> None:
        self.check(self.width > 0, f"width must be > 0, got {self.width}")


def test_types_are_checked_at_construction():
    assert Toy(rate=1).rate == 1.0 and isinstance(Toy(rate=1).rate, float)
    with pytest.raises(UserError, match="Toy.width must be an integer"):
        Toy(width="3")
    with pytest.raises(UserError, match="must be true or false"):
        Toy(flag=1)
    with pytest.raises(UserError, match="'z'.*Accepted: x, y"):
        Toy(mode="z")
    with pytest.raises(UserError, match="width must be > 0"):
        Toy(width=0)
    assert Toy(sizes=[1, 2]).sizes == (1, 2)


def test_frozen():
    with pytest.raises(FrozenInstanceError):
        Toy().width = 3


def test_json_round_trip_preserves_values_and_types():
    cfg = Toy(width=7, rate=0.25, name="b", flag=True, mode="y", sizes=(3, 2, 1), limit=2.5)
    back = Toy.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and isinstance(back.sizes, tuple)


def test_unknown_keys_are_errors_with_suggestions():
    with pytest.raises(UserError, match="no setting 'widht'.*Did you mean 'width'"):
        Toy.from_dict({"widht": 3})
    with pytest.raises(UserError, match="no setting 'nope'"):
        Toy().with_overrides({"nope": "1"})


@pytest.mark.parametrize(
    "key,text,expected",
    [
        ("width", "12", 12),
        ("rate", "1e-3", 1e-3),
        ("flag", "true", True),
        ("flag", "no", False),
        ("mode", "y", "y"),
        ("sizes", "16,8,4", (16, 8, 4)),
        ("sizes", "(5)", (5,)),
        ("limit", "none", None),
        ("limit", "3", 3.0),
        ("name", "hello", "hello"),
    ],
)
def test_overrides_parse_by_annotation(key, text, expected):
    assert getattr(Toy().with_overrides({key: text}), key) == expected


@pytest.mark.parametrize("key,text", [("width", "abc"), ("rate", "fast"), ("flag", "maybe"), ("sizes", "1,x"), ("width", "-1")])
def test_bad_override_values_are_user_errors(key, text):
    with pytest.raises(UserError):
        Toy().with_overrides({key: text})


def test_parse_assignments():
    assert parse_assignments(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(UserError, match="key=value"):
        parse_assignments(["novalue"])


def test_split_overrides_routes_by_owner_and_prefix():
    configs = {"model": Toy(), "train": TrainConfig(), "data": DataConfig()}
    routed = split_overrides({"width": "3", "epochs": "2", "data.seed": "5", "train.seed": "1"}, configs)
    assert routed == {"model": {"width": "3"}, "train": {"epochs": "2", "seed": "1"}, "data": {"seed": "5"}}
    with pytest.raises(UserError, match="ambiguous.*train.seed"):
        split_overrides({"seed": "1"}, configs)
    with pytest.raises(UserError, match="unknown setting 'epoch'.*epochs"):
        split_overrides({"epoch": "1"}, configs)


def test_train_config_validation():
    with pytest.raises(UserError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(UserError, match="ema must be in"):
        TrainConfig(ema=1.0)
    with pytest.raises(UserError, match="Accepted: constant, cosine, iwae, linear"):
        TrainConfig().with_overrides({"schedule": "step"})


# -- issue 16: from_dict never raises a raw TypeError ----------------------------------------


@dataclass(frozen=True)
class Needs(Config):
    size: int
    depth: int
    rate: float = 0.5


def test_missing_required_settings_are_one_user_error_naming_them():
    with pytest.raises(UserError) as e:
        Needs.from_dict({"rate": 0.1})
    msg = str(e.value)
    assert not isinstance(e.value, TypeError)
    assert msg.startswith("Needs needs settings 'size', 'depth'")
    assert "Accepted settings: size (int, required), depth (int, required), rate (float)." in msg
    with pytest.raises(UserError, match=r"^Needs needs setting 'depth', which has no default"):
        Needs.from_dict({"size": 3})
    assert Needs.required_fields() == ["size", "depth"] and Toy.required_fields() == []


@pytest.mark.parametrize(
    "values,pattern",
    [
        (None, r"Needs is built from a mapping of settings to values, got NoneType None\. Accepted settings: size"),
        ([1, 2], r"got list \[1, 2\]"),
        ("size=3", r"got str 'size=3'"),
        ({1: 2, "size": 3, "depth": 4}, r"Needs: setting names are strings, got 1\. Accepted: depth, rate, size\."),
        ({"size": 3, "depth": 4, "sise": 5}, r"Needs has no setting 'sise'\. Accepted: .* Did you mean 'size'\?"),
        ({"size": "3", "depth": 4}, r"Needs\.size must be an integer, got '3'"),
    ],
)
def test_from_dict_rejects_every_bad_mapping_with_a_user_error(values, pattern):
    with pytest.raises(UserError, match=pattern):
        Needs.from_dict(values)


def test_replace_and_with_overrides_take_the_same_path():
    cfg = Needs(size=1, depth=2)
    assert cfg.replace(rate=1) == Needs(size=1, depth=2, rate=1.0)
    assert Needs.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(UserError, match=r"Needs has no setting 'dpeth'.*Did you mean 'depth'"):
        cfg.replace(dpeth=3)
    with pytest.raises(UserError, match=r"Needs\.depth must be an integer"):
        cfg.replace(depth="deep")
    assert cfg.with_overrides({"depth": "5"}).depth == 5
    with pytest.raises(UserError, match=r"Needs has no setting 'dpeth'.*Did you mean 'depth'"):
        cfg.with_overrides({"dpeth": "5"})
    with pytest.raises(UserError, match=r"Needs\.depth: with_overrides takes text .* use replace\(depth=\.\.\.\)"):
        cfg.with_overrides({"depth": 5})  # type: ignore[dict-item]


@dataclass(frozen=True)
class Derived(Config):
    width: int = 4
    area: int = field(default=0, init=False)  # computed from width

    def __post_init__(self) -> None:
        object.__setattr__(self, "area", self.width * self.width)
        super().__post_init__()


def test_a_computed_field_round_trips_and_cannot_be_set():
    cfg = Derived(width=3)
    assert Derived.from_dict(cfg.to_dict()) == cfg and cfg.replace(width=2).area == 4
    with pytest.raises(UserError, match=r"Derived\.area is computed from the other settings \(9 here\), not set: got 10"):
        Derived.from_dict({"width": 3, "area": 10})
    assert "area" not in Derived.accepted_settings()


class Custom(Toy):
    """A subclass whose own __init__ takes other arguments than its fields."""

    def __init__(self, scale: int) -> None:
        super().__init__(width=scale)


def test_a_constructor_that_refuses_the_mapping_is_a_user_error():
    with pytest.raises(UserError, match=r"^Custom cannot be built from \{'width': 3\}: missing a required argument: 'scale'\. Accepted settings: width \(int\)"):
        Custom.from_dict({"width": 3})


def test_a_type_error_inside_validate_is_not_dressed_up():
    @dataclass(frozen=True)
    class Buggy(Config):
        width: int = 1

        def validate(self) -> None:
            self.check(self.width > None, "never")  # type: ignore[operator]  (a bug, not a user's mistake)

    with pytest.raises(TypeError):
        Buggy.from_dict({"width": 2})
