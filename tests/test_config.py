"""Configs: type checks at construction, JSON round trip, key=value overrides, routing."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, dataclass
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
    with pytest.raises(UserError, match="Accepted: constant, cosine, linear"):
        TrainConfig().with_overrides({"schedule": "step"})
