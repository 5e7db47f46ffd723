"""ucmkd_jax.overrides: dotted paths into nested config dataclasses, typed parsing, choices."""
import dataclasses
import re
from typing import Literal, Optional, Tuple

import pytest

from ucmkd_jax.config import ExperimentConfig, get_preset
from ucmkd_jax.overrides import (ConfigError, apply_overrides, choice_field, describe_fields, get_field,
                                 parse_value, set_field, settable_paths, validate)


@dataclasses.dataclass(frozen=True)
class Inner:
    mode: Literal["a", "b"] = "a"
    size: int = 3

    def __post_init__(self):
        validate(self)
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = choice_field("x", lambda: ("x", "y"))
    rate: float = 0.5
    on: bool = True
    limit: Optional[int] = None
    tags: Tuple[str, ...] = ("p",)
    inner: Inner = Inner()

    def __post_init__(self):
        validate(self)


@pytest.mark.parametrize("text,tp,want", [
    ("3", int, 3), ("-2.5e-3", float, -2.5e-3), ("yes", bool, True), ("0", bool, False), ("Off", bool, False),
    ("none", Optional[int], None), ("7", Optional[int], 7), ("a, b,c", Tuple[str, ...], ("a", "b", "c")),
    ("4,2,1", Tuple[int, ...], (4, 2, 1)), ("b", Literal["a", "b"], "b"), ("text", str, "text"),
])
def test_strings_are_read_by_the_field_type(text, tp, want):
    got = parse_value(text, tp)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("text,tp,message", [
    ("two", int, "takes int; got 'two'"), ("maybe", bool, "takes bool"), ("c", Literal["a", "b"], "one of a, b"),
    ("none", int, "takes int"),
])
def test_bad_strings_name_the_type(text, tp, message):
    with pytest.raises(ConfigError, match=message):
        parse_value(text, tp)


def test_set_field_rebuilds_every_level_and_runs_the_checks():
    cfg = Outer()
    new = set_field(cfg, "inner.size", "9")
    assert new.inner.size == 9 and cfg.inner.size == 3  # a copy; frozen dataclasses all the way
    assert get_field(new, "inner.mode") == "a"
    assert apply_overrides(cfg, ["limit=4", "tags=q,r", "on=false"]) == Outer(limit=4, tags=("q", "r"), on=False)


@pytest.mark.parametrize("path,value,message", [
    ("inner.size", "-1", "inner.size=-1: size must be >= 0"),  # a __post_init__ check, named by its path
    ("name", "z", "Outer.name must be one of x, y; got 'z'"),
    ("inner.mode", "c", "inner.mode must be one of a, b"),
    ("inner", "1", "inner is a group; set one of its fields: inner.mode, inner.size"),
    ("inner.sise", "1", "no config field 'inner.sise'; inner has: mode, size"),
    ("size", "1", "did you mean inner.size"),
    ("rate.x", "1", "rate is not a group"),
])
def test_bad_paths_and_values_are_named(path, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        set_field(Outer(), path, value)
    with pytest.raises(ConfigError, match="expected path=value"):
        apply_overrides(Outer(), ["rate"])


def test_validate_checks_choices_at_construction():
    with pytest.raises(ConfigError, match="Inner.mode must be one of a, b; got 'c'"):
        Inner(mode="c")
    with pytest.raises(ConfigError, match="Outer.name"):
        Outer(name="nope")


def test_every_leaf_of_the_experiment_config_is_settable_and_listed():
    cfg = get_preset("synthetic")
    paths = settable_paths(cfg)
    assert len(paths) == len(set(paths)) > 80  # the baselines' options are in there too
    text = describe_fields(cfg)
    for path in paths:
        assert f"  {path} " in text
        value = get_field(cfg, path)
        shown = "none" if value is None else ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert set_field(cfg, path, shown) == cfg, path  # every value, written as a string, reads back equal
    assert ExperimentConfig().pairing == "unpaired"
