"""Typed access to every field of a nested config dataclass by its dotted path.

    cfg = apply_overrides(get_preset("crema_d"), ["method.fa.epsilon=0.05", "train.epochs=20"])
    set_field(cfg, "methods", "ce,ucmkd")              # strings are parsed by the field's type
    print(describe_fields(cfg))                         # every settable path, its type and value

The field types say how a string is read: ``bool`` (true/false/yes/no/1/0), ``int``, ``float``,
``str``, ``Optional[T]`` ("none" or "null" for None), ``Tuple[T, ...]`` (a comma list) and
``Literal[...]`` (one of its values). A field's allowed values come from its ``Literal`` type or,
for names looked up in a registry (methods, backbones, datasets), from a ``choices`` callable in
its metadata (``choice_field``); ``validate`` checks both and every config calls it in
``__post_init__``, so a bad value is refused where the config is made, from the CLI or Python
alike. Nested dataclasses are groups: set their fields (``method.fa.cost=l2``), not the group.

This module is plain Python (no JAX): it is the one place where flags become typed values.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

__all__ = ["ConfigError", "choice_field", "bounded", "validate", "field_types", "settable_paths", "parse_value",
           "get_field", "set_field", "apply_overrides", "describe_fields", "choices_of"]

_TRUE, _FALSE, _NONE = ("true", "yes", "1", "on"), ("false", "no", "0", "off"), ("none", "null")


class ConfigError(ValueError):
    """A config path that does not exist, a value of the wrong type or outside its choices."""


def choice_field(default, choices: Callable[[], Iterable[str]], doc: str = ""):
    """A dataclass field whose value (or, for a tuple, each element) must be in ``choices()``,
    a callable so that registries filled at import time (methods, backbones) are read late."""
    return dataclasses.field(default=default, metadata={"choices": choices, "doc": doc})


def bounded(default, *, ge=None, gt=None, le=None, lt=None, why: str = ""):
    """A numeric dataclass field that ``validate`` keeps within the given bounds (None, for an
    Optional field, is always allowed); ``why`` is added to the message."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": bounds, "why": why})


_RELATIONS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
              "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def field_types(obj) -> Dict[str, Any]:
    """Resolved type hints of the dataclass (instance or class) ``obj``."""
    cls = obj if isinstance(obj, type) else type(obj)
    return typing.get_type_hints(cls)


def _strip_optional(tp) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def choices_of(obj, name: str) -> Optional[Tuple]:
    """The allowed values of field ``name`` of the dataclass ``obj`` (its ``Literal`` values or
    its ``choices``), or None when any value of its type goes."""
    f = {f.name: f for f in dataclasses.fields(obj)}[name]
    if "choices" in f.metadata:
        return tuple(f.metadata["choices"]())
    tp, _ = _strip_optional(field_types(obj)[name])
    if typing.get_origin(tp) in (tuple, Tuple):
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    return None


def validate(obj) -> None:
    """Raise ConfigError unless every field of the dataclass ``obj`` with choices holds one of
    them (each element, for tuples) and every ``bounded`` field is within its bounds. Call it
    from ``__post_init__``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for rel, bound in f.metadata.get("bounds", {}).items():
            sign, ok = _RELATIONS[rel]
            if value is not None and not ok(value, bound):
                why = f" ({f.metadata['why']})" if f.metadata.get("why") else ""
                raise ConfigError(f"{type(obj).__name__}.{f.name} must be {sign} {bound}{why}; got {value!r}")
        allowed = choices_of(obj, f.name)
        if allowed is None or value is None:
            continue
        for v in (value if isinstance(value, tuple) else (value,)):
            if v not in allowed:
                raise ConfigError(f"{type(obj).__name__}.{f.name} must be one of {', '.join(map(str, allowed))}; "
                                  f"got {v!r}")


def parse_value(text: str, tp, where: str = "value"):
    """``text`` read as type ``tp`` (see the module docstring). Raises ConfigError."""
    if not isinstance(text, str):
        return text
    inner, optional = _strip_optional(tp)
    if optional and text.strip().lower() in _NONE:
        return None
    origin = typing.get_origin(inner)
    if origin in (tuple, Tuple):
        item = typing.get_args(inner)[0]
        return tuple(parse_value(t.strip(), item, where) for t in text.split(",") if t.strip())
    if origin is typing.Literal:
        values = typing.get_args(inner)
        for v in values:
            if str(v) == text:
                return v
        raise ConfigError(f"{where} must be one of {', '.join(map(str, values))}; got {text!r}")
    try:
        if inner is bool:
            low = text.strip().lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError(text)
        if inner is int:
            return int(text)
        if inner is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{where} takes {getattr(inner, '__name__', inner)}; got {text!r}") from None
    if inner is str or inner is Any:
        return text
    raise ConfigError(f"{where} has type {inner}, which cannot be set from a string")


def settable_paths(cfg, prefix: str = "") -> List[str]:
    """Every dotted path of a leaf (non-dataclass) field of the config ``cfg``, in field order."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += settable_paths(value, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _split(cfg, path: str):
    """(the dataclass holding the last part of ``path``, that part)."""
    parts = path.split(".")
    node = cfg
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            where = ".".join(parts[:i]) or type(cfg).__name__
            close = [p for p in settable_paths(cfg) if p.endswith("." + part) or p == part]
            hint = f"; did you mean {', '.join(close)}?" if close else f"; {where} has: {', '.join(names)}"
            raise ConfigError(f"no config field {path!r}{hint}")
        if i == len(parts) - 1:
            return node, part
        node = getattr(node, part)
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"no config field {path!r}: {'.'.join(parts[:i + 1])} is not a group")
    raise ConfigError(f"empty config path {path!r}")


def get_field(cfg, path: str):
    node, name = _split(cfg, path)
    return getattr(node, name)


def set_field(cfg, path: str, value):
    """A copy of ``cfg`` with the field at ``path`` set to ``value`` (a string is parsed by the
    field's type); every dataclass on the way is rebuilt, so ``__post_init__`` checks run."""
    node, name = _split(cfg, path)
    if dataclasses.is_dataclass(getattr(node, name)):
        inside = settable_paths(getattr(node, name), path + ".")
        more = f", ... ({len(inside)} in all)" if len(inside) > 6 else ""
        raise ConfigError(f"{path} is a group; set one of its fields: {', '.join(inside[:6])}{more}")
    value = parse_value(value, field_types(node)[name], path)
    parts = path.split(".")

    def rebuild(obj, i):
        if i == len(parts) - 1:
            return dataclasses.replace(obj, **{parts[i]: value})
        return dataclasses.replace(obj, **{parts[i]: rebuild(getattr(obj, parts[i]), i + 1)})

    try:
        return rebuild(cfg, 0)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a __post_init__ check: name the path that caused it
        raise ConfigError(f"{path}={value!r}: {e}") from e


def apply_overrides(cfg, items: Iterable[str]):
    """``cfg`` with each ``"path=value"`` of ``items`` applied in order."""
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected path=value, got {item!r} (e.g. method.fa.epsilon=0.05)")
        path, value = item.split("=", 1)
        cfg = set_field(cfg, path.strip(), value.strip())
    return cfg


def _type_name(tp) -> str:
    inner, optional = _strip_optional(tp)
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        name = "|".join(map(str, typing.get_args(inner)))
    elif origin in (tuple, Tuple):
        name = f"comma list of {_type_name(typing.get_args(inner)[0])}"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or none" if optional else name


def describe_fields(cfg, prefix: str = "") -> str:
    """One line per settable path: ``path  type  = current value`` (choices in brackets)."""
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(describe_fields(value, f"{prefix}{f.name}."))
            continue
        tp = _type_name(field_types(cfg)[f.name])
        if "choices" in f.metadata:
            tp += " [" + "|".join(map(str, f.metadata["choices"]())) + "]"
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        lines.append(f"  {prefix}{f.name:<{max(1, 34 - len(prefix))}} {tp}  = {shown}")
    return "\n".join(lines)
