"""``KEY=VALUE`` options (``--loss-param``, ``--judge-param``): split, then typed like the declared default.

A plugin declares its parameters with defaults (``Loss.params``,
``Judge.params``); a command-line value is a string, converted to the type
of that default, so ``tie_margin=0.5`` is a float and ``probability=false``
a bool for every plugin kind alike. A parameter whose default is a string or
``None`` keeps the string as written.
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import DpoPluginsError

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_key_values(items: Sequence[str], option: str, key_help: str = "KEY=VALUE") -> dict[str, str]:
    """``["k=v", "loss.k=v"]`` -> ``{"k": "v", "loss.k": "v"}``; every malformed item is listed."""
    parsed, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"{option} {item!r}: expected {key_help}")
        else:
            parsed[key.strip()] = value.strip()
    if problems:
        raise DpoPluginsError("\n".join(problems))
    return parsed


def typed_like(default: Any, value: Any) -> Any:
    """Convert a command-line string to the type of the parameter's default (``ValueError`` if it cannot)."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    if isinstance(default, bool):
        if value.lower() in TRUE:
            return True
        if value.lower() in FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    try:
        return type(default)(value)
    except ValueError:
        raise ValueError(f"expected a {type(default).__name__}, got {value!r}") from None
