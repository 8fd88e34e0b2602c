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
from dpo_plugins.records import format_path

JsonPath = Tuple[Union[str, int], ...]


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
    """Parse ``path``; a syntax error becomes a :class:`ConfigError` with its line.

    So does a file past the size or depth budget (MAX_NODES, MAX_DEPTH) or
    with a recursive alias, checked before the tree is built or walked.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ConfigError([f"{path}:1: $: cannot read the file: {error.strerror or error}"]) from error
    try:
        _check_budgets(path, text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        reason = getattr(error, "problem", None) or str(error)
        raise ConfigError([f"{path}:{line}: $: invalid YAML: {reason}"]) from error
    lines: Dict[JsonPath, int] = {}
    if node is not None:
        repeated: List[str] = []
        _record_lines(node, (), lines, repeated)
        if repeated:
            raise ConfigError([f"{path}:{where}" for where in repeated])
    return YamlFile(path=path, data=data, lines=lines)


# A config is a small tree. Its size as expanded (every alias counted as a
# copy of its anchor, mapping keys included) and its depth are capped, so an
# alias bomb (a few hundred bytes, 9**9 nodes), a recursive alias or
# pathological nesting is refused before anything walks the tree: the lines
# map, the validators and mergekit all expand aliases. A mergekit config with
# a few anchors is some hundreds of nodes and under ten levels deep.
MAX_NODES = 10_000
MAX_DEPTH = 100


def _check_budgets(path: Path, text: str) -> None:
    """Refuse ``text`` past MAX_NODES / MAX_DEPTH, or with a recursive alias, from its parse events alone.

    Events are a flat stream (no alias is expanded, no recursion), and the
    scan stops at the first offence, so a hostile file costs milliseconds.
    """
    sizes: Dict[str, int] = {}  # anchor -> expanded size of its finished node
    open_nodes: List[List[Any]] = []  # [anchor, expanded size so far] per collection being read
    total = 0

    def add(size: int) -> None:
        nonlocal total
        total += size
        if open_nodes:
            open_nodes[-1][1] += size

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes and any(anchor == event.anchor for anchor, _ in open_nodes):
                raise ConfigError([f"{path}:{line}: $: the alias *{event.anchor} is used inside its own anchor "
                                   f"(a recursive alias); a config must be a tree"])
            add(sizes.get(event.anchor, 1))  # an undefined alias: the composer reports it
        elif isinstance(event, yaml.ScalarEvent):
            add(1)
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            add(1)
            sizes.pop(event.anchor, None)  # an alias inside refers to this node from now on, not an older one
            open_nodes.append([event.anchor, 1])
            if len(open_nodes) > MAX_DEPTH:
                raise ConfigError([f"{path}:{line}: $: nested deeper than {MAX_DEPTH} levels; "
                                   f"a config is never this deep"])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = size
            if open_nodes:
                open_nodes[-1][1] += size - 1  # its own 1 was added to the parent when it opened
        if total > MAX_NODES:
            raise ConfigError([f"{path}:{line}: $: more than {MAX_NODES:,} nodes with its aliases expanded "
                               f"(a YAML alias bomb?); a config is never this big"])


def _record_lines(node: yaml.Node, path: JsonPath, lines: Dict[JsonPath, int], repeated: List[str]) -> None:
    """Fill ``lines``; add ``LINE: json.path: message`` to ``repeated`` for each key a mapping repeats.

    YAML loaders keep a repeated key's last value silently (``lora: true`` then
    ``lora: false``), so a repeat is an error, as in JSON rows.
    """
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first: Dict[Any, int] = {}
        for key, value in node.value:
            child = path + (key.value,)
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                if key.value in first:
                    repeated.append(f"{line}: {format_path(child)}: duplicate key {key.value!r} (first given on "
                                    f"line {first[key.value]}); YAML keeps only the last value, so give it once")
                first.setdefault(key.value, line)
            lines[child] = line
            _record_lines(value, child, lines, repeated)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, path + (index,), lines, repeated)


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
