"""YAML configuration files whose errors point at a line.

``dpo merge`` and ``dpo anneal`` read YAML and must report every problem as
``PATH:LINE: json.path: message``. ``load_yaml`` keeps, next to the parsed
data, the line of every key and list item, so a validator can collect
``(path, message)`` pairs and :class:`ConfigError` turns them into lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import yaml

from dpo_plugins.errors import ConfigError

JsonPath = Tuple[Union[str, int], ...]


def format_path(path: Sequence[Union[str, int]]) -> str:
    """``("models", 1, "model")`` -> ``models[1].model`` (``$`` for the root)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "$"


@dataclass
class YamlFile:
    """Parsed YAML plus the line (1-based) where each path starts."""

    path: Path
    data: Any
    lines: Dict[JsonPath, int]

    def line_of(self, path: Sequence[Union[str, int]]) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def location(self, path: Sequence[Union[str, int]]) -> str:
        """``PATH:LINE: json.path``, the start of every problem line about ``path``."""
        return f"{self.path}:{self.line_of(path)}: {format_path(path)}"

    def problem(self, path: Sequence[Union[str, int]], message: str) -> str:
        return f"{self.location(path)}: {message}"




def load_yaml(path: Union[str, Path]) -> YamlFile:
    """Parse ``path``; a syntax error becomes a :class:`ConfigError` with its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ConfigError([f"{path}:1: $: cannot read the file: {error.strerror or error}"]) from error
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        reason = getattr(error, "problem", None) or str(error)
        raise ConfigError([f"{path}:{line}: $: invalid YAML: {reason}"]) from error
    lines: Dict[JsonPath, int] = {}
    if node is not None:
        _record_lines(node, (), lines)
    return YamlFile(path=path, data=data, lines=lines)


def _record_lines(node: yaml.Node, path: JsonPath, lines: Dict[JsonPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (key.value,)
            lines[child] = key.start_mark.line + 1
            _record_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, path + (index,), lines)


class ConfigChecker:
    """Collects every problem found in one YAML file (under ``prefix``), to report all at once in line order."""

    def __init__(self, source: YamlFile, prefix: JsonPath = ()):
        self.source = source
        self.prefix = tuple(prefix)
        self.problems: List[Tuple[int, str]] = []  # (line, text)

    def problem(self, path: Sequence[Union[str, int]], message: str) -> None:
        path = self.prefix + tuple(path)
        self.problems.append((self.source.line_of(path), self.source.problem(path, message)))

    def sorted_problems(self) -> List[str]:
        return [text for _, text in sorted(self.problems, key=lambda item: item[0])]
