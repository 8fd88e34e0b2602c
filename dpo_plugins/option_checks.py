"""Every option value checked before any model loads: types, ranges, booleans written as strings.

A value a user can type must never reach a model, a trainer or a merge in a
shape that fails minutes later ("unexpected ValueError ... this is a bug"),
or worse, silently means something else: YAML's ``lora: "false"`` is a
non-empty string, which Python reads as true. So

- command-line flags get argparse types that say what they accept
  (:func:`positive_int`, :func:`probability`, ...): argparse names the flag;
- values from a config file are checked against the type of the field they
  set (:func:`type_problem`), named ``FILE:LINE: key``;
- ``dpo train``'s settings, wherever each came from, are checked for range
  (:func:`training_range_problems`): positive sizes, ``beta > 0``,
  ``0 <= ld_alpha <= 1``, finite loss weights with a non-zero sum, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Callable, Optional


# -- argparse types ------------------------------------------------------------------


def _number(text: str, kind: type):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (a batch size, a count)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (where 0 means "none", as documented by the option)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def probability(text: str) -> float:
    """A number in (0, 1] (nucleus sampling's top-p)."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


# -- config values against their field's type ----------------------------------------------


_NAMED = {"bool": bool, "int": int, "float": float, "str": str}


def type_problem(value: Any, annotation: Any) -> Optional[str]:
    """Why ``value`` (from a config file) cannot set a field annotated ``annotation``, or None.

    Only scalar types and lists of them are checked; a type this does not
    know (an enum, a mapping) is left to the field's own parser.
    """
    kinds = _kinds(annotation)
    if kinds is None:
        return None
    if value is None:
        return None if type(None) in kinds else "expected a value, got null"
    if list in kinds and isinstance(value, str) and _element_kind(annotation) in (None, str):
        return None  # one item for a list of names (`loss: sigmoid`)
    if list in kinds and isinstance(value, list):
        element = _element_kind(annotation)
        bad = [item for item in value if element is not None and not _fits(item, element)]
        return f"expected a list of {element.__name__} values, got {bad[0]!r} in it" if bad else None
    if any(_fits(value, kind) for kind in kinds if kind is not list):
        return None
    wanted = " or ".join(_describe(kind) for kind in kinds if kind is not type(None))
    hint = " (write it without quotes)" if isinstance(value, str) and any(
        _fits(_unquoted(value), kind) for kind in kinds & {bool, int, float}) else ""
    return f"expected {wanted}, got {type(value).__name__} {value!r}{hint}"


def config_value(value: Any, annotation: Any) -> tuple[Any, Optional[str]]:
    """``(value, problem)`` for a config value setting a field annotated ``annotation``.

    A number YAML 1.1 reads as a string (``1e-5``: its floats need a dot)
    becomes the number; a string where a boolean is wanted never does.
    """
    kinds = _kinds(annotation) or set()
    if isinstance(value, str) and str not in kinds and kinds & {int, float}:
        number = _unquoted(value)
        if not isinstance(number, (bool, str)) and any(_fits(number, kind) for kind in kinds & {int, float}):
            return number, None
    return value, type_problem(value, annotation)


def _kinds(annotation: Any) -> Optional[set]:
    if isinstance(annotation, str):
        parts = [part.strip() for part in annotation.replace("Optional[", "").rstrip("]").split("|")]
        kinds = {_NAMED.get(part, list if part.startswith("list") else None) for part in parts}
        if "None" in parts or annotation.startswith("Optional["):
            kinds.discard(None)
            kinds.add(type(None))
        return None if None in kinds else kinds
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = set()
        for arg in typing.get_args(annotation):
            found = _kinds(arg)
            if found is None:
                return None
            kinds |= found
        return kinds
    if origin is list or annotation is list:
        return {list}
    if annotation is type(None):
        return {type(None)}
    return {annotation} if annotation in (bool, int, float, str) else None


def _element_kind(annotation: Any) -> Optional[type]:
    for arg in typing.get_args(annotation) if not isinstance(annotation, str) else ():
        if typing.get_origin(arg) is list or arg is list:
            inner = typing.get_args(arg)
            return inner[0] if inner and inner[0] in (bool, int, float, str) else None
    if typing.get_origin(annotation) is list:
        inner = typing.get_args(annotation)
        return inner[0] if inner and inner[0] in (bool, int, float, str) else None
    return None


def _fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is type(None):
        return value is None
    return isinstance(value, kind)


def _unquoted(text: str) -> Any:
    """What ``text`` would be as a YAML boolean or number without its quotes (for the hint only)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false", "yes", "no", "on", "off"):
        return lowered in ("true", "yes", "on")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _describe(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
            list: "a list"}.get(kind, kind.__name__)


# -- dpo train's ranges ----------------------------------------------------------------


def training_range_problems(options: Any, dpo: Any, name: Callable[[str], str]) -> list[str]:
    """Every ``dpo train`` setting out of range, as ``NAME: message``; ``name(field)`` locates a field.

    ``options`` is :class:`~dpo_plugins.workflows.train.TrainOptions`, ``dpo``
    the parsed ``DPOConfig``.
    """
    problems = []

    def need(field: str, value: Any, ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{name(field)}: must be {what}, got {value!r}")

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    for spec in dataclasses.fields(dpo):  # no setting is NaN (a NaN weight decay trains NaN weights, silently)
        value = getattr(dpo, spec.name, None)
        if isinstance(value, float) and math.isnan(value):
            problems.append(f"{name(spec.name)}: must be a number, got nan")
    for field in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(dpo, field, 1)
        need(field, value, isinstance(value, int) and value >= 1, "a positive integer")
    for field in ("max_length", "max_prompt_length", "max_completion_length"):
        value = getattr(dpo, field, None)
        need(field, value, value is None or (isinstance(value, int) and value >= 1), "a positive integer (or unset)")
    need("beta", dpo.beta, finite(dpo.beta) and dpo.beta > 0, "a finite number > 0")
    ld_alpha = getattr(dpo, "ld_alpha", None)
    need("ld_alpha", ld_alpha, ld_alpha is None or (finite(ld_alpha) and 0 <= ld_alpha <= 1), "between 0 and 1")
    need("learning_rate", dpo.learning_rate, finite(dpo.learning_rate) and dpo.learning_rate >= 0,
         "a finite number >= 0")
    need("num_train_epochs", dpo.num_train_epochs, finite(dpo.num_train_epochs) and
         (dpo.num_train_epochs > 0 or dpo.max_steps > 0), "a finite number > 0 (or set max_steps)")
    weights = getattr(dpo, "loss_weights", None)
    if weights is not None:
        need("loss_weights", weights, all(finite(w) for w in weights) and sum(weights) != 0,
             "finite numbers with a non-zero sum")
    need("lora_r", options.lora_r, isinstance(options.lora_r, int) and options.lora_r >= 1, "a positive integer")
    need("lora_alpha", options.lora_alpha, finite(options.lora_alpha) and options.lora_alpha > 0, "a number > 0")
    need("lora_dropout", options.lora_dropout, finite(options.lora_dropout) and 0 <= options.lora_dropout < 1,
         "at least 0 and below 1")
    need("sft_epochs", options.sft_epochs, finite(options.sft_epochs) and options.sft_epochs > 0, "a number > 0")
    need("sft_learning_rate", options.sft_learning_rate,
         finite(options.sft_learning_rate) and options.sft_learning_rate > 0, "a number > 0")
    return problems
