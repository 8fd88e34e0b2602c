"""The package layout's rules, checked on the source tree (docs/architecture.md explains them).

Imports are read with ``ast``, function-level ones included, so a lazy
import cannot hide an upward arrow or a cycle.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import Counter
from pathlib import Path

import pytest

from dpo_plugins import hookspecs

ROOT = Path(__file__).resolve().parent.parent
# Where each installed package lives in the repository (pyproject's package-dir).
SOURCES = {"dpo_plugins": ROOT / "dpo_plugins", "dpo_plugins.adapters": ROOT / "adapters",
           "dpo_plugins.evals": ROOT / "evals"}
# Layers, lowest first: a module may import its own layer and the ones below.
LAYERS = [
    # formats/files.py and exactjson.py are file I/O every layer may use (evals read judgments files with them)
    ("base", r"dpo_plugins(\.(errors|specs|records|hookspecs|plugins|params|atomic|option_checks|console|formats\.files|formats\.exactjson))?"),
    ("adapters", r"dpo_plugins\.adapters(\..+)?"),
    ("evals", r"dpo_plugins\.evals(\..+)?"),
    ("features", r"dpo_plugins\.(formats|workflows|default_plugins)(\..+)?"),
    ("interface", r"dpo_plugins\.(cli|__main__|commands(\..+)?)"),
]


def _modules() -> dict[str, Path]:
    """Every module of the installed packages, by dotted name."""
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if package == "dpo_plugins" and path.relative_to(folder).parts[0] in ("adapters", "evals"):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports anywhere in its body (a package means its ``__init__``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        targets.update(c for c in candidates if c in MODULES and c != name)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _unresolved(name: str, path: Path) -> list[str]:
    """``from X import`` lines of ``name`` whose package module X does not exist (a move left them stale)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    stale = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("dpo_plugins") and base not in MODULES:
                stale.append(f"{name}:{node.lineno}: from {base}")
    return stale


def test_every_import_of_a_package_module_resolves():
    assert [line for name, path in MODULES.items() for line in _unresolved(name, path)] == []


def _top_level_names(path: Path) -> set[str]:
    """What ``from MODULE import NAME`` can find in a module: its top-level definitions and imports."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def test_every_imported_name_exists_in_its_module():
    """A name moved to another module leaves no stale ``from MODULE import NAME``, function-level ones included."""
    stale = []
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base not in MODULES:
                continue
            defined = _top_level_names(MODULES[base])
            stale += [f"{name}:{node.lineno}: from {base} import {alias.name}" for alias in node.names
                      if alias.name != "*" and alias.name not in defined and f"{base}.{alias.name}" not in MODULES]
    assert stale == []


def _layer(name: str) -> int:
    return next(rank for rank, (_, pattern) in enumerate(LAYERS) if re.fullmatch(pattern, name))


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


def test_imports_point_down_the_layers():
    upward = [f"{name} -> {target}" for name, targets in GRAPH.items() for target in targets
              if _layer(target) > _layer(name)]
    assert upward == []


def test_adapters_import_nothing_from_evals_commands_or_cli():
    forbidden = re.compile(r"dpo_plugins\.(evals|commands|cli)(\..+)?")
    assert [(n, t) for n, ts in GRAPH.items() if n.startswith("dpo_plugins.adapters") for t in ts
            if forbidden.fullmatch(t)] == []


# The libraries whose classes and internals only adapters/ may touch (torch tensors may appear anywhere).
HOST_LIBRARIES = ("transformers", "trl", "peft", "accelerate", "mergekit")


def _third_party(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path``, function-level ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_only_adapters_import_transformers_trl_peft_accelerate_or_mergekit():
    outside = sorted(f"{name} imports {library}" for name, path in MODULES.items()
                     if not name.startswith("dpo_plugins.adapters")
                     for library in sorted(_third_party(path) & set(HOST_LIBRARIES)))
    assert outside == []


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(name, path):
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_two_modules_share_a_file_name():
    """Apart from ``__init__.py``, and a ``commands/<subcommand>.py`` beside the one module it runs."""
    names = Counter(path.name for name, path in MODULES.items()
                    if path.name != "__init__.py" and not name.startswith("dpo_plugins.commands."))
    assert [name for name, count in names.items() if count > 1] == []
    namesakes = {path.name: name for name, path in MODULES.items() if not name.startswith("dpo_plugins.commands.")}
    mirrors = [(name, namesakes[path.name]) for name, path in MODULES.items()
               if name.startswith("dpo_plugins.commands.") and path.name in namesakes and path.name != "__init__.py"]
    assert [(command, other) for command, other in mirrors if other not in GRAPH[command]] == []


@pytest.mark.parametrize("needle, owner", [
    (r"\bos\.replace\(|\btempfile\.mk|\bshutil\.rmtree\(", "dpo_plugins.atomic"),
    (r"\byaml\.(safe_load|load|compose|full_load)\(", "dpo_plugins.workflows.config"),
])
def test_one_module_writes_atomically_and_one_reads_yaml(needle, owner):
    users = sorted(name for name, path in MODULES.items()
                   if re.search(needle, path.read_text(encoding="utf-8"), flags=re.M))
    assert users == [owner]


def test_the_architecture_doc_names_every_module_once():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- modules -->\n```\n(.*?)```", doc, flags=re.S).group(1)
    listed, folder = [], ""
    for line in block.splitlines():
        entry = line.split()[0] if line.strip() else ""
        if entry.endswith("/"):
            folder = entry if not line.startswith(" ") else folder.split("/")[0] + "/" + entry
        elif entry.endswith(".py"):
            assert len(line.split(None, 1)) == 2, f"{entry}: no one-line job"
            listed.append(folder + entry)
    in_tree = sorted(str(path.relative_to(ROOT)) for path in MODULES.values())
    assert sorted(listed) == in_tree
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text(encoding="utf-8"), "the README links the list"


HOOKS = sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "dpo_plugins_spec"))


@pytest.mark.parametrize("hook", HOOKS)
def test_documented_hook_signature_matches_the_hookspec(hook):
    documented = re.findall(rf"^## `{hook}\((.*?)\)`", (ROOT / "docs" / "hooks.md").read_text(), flags=re.M)
    arguments = [a.strip() for a in documented[0].split(",") if a.strip()] if documented else None
    assert arguments == list(inspect.signature(getattr(hookspecs, hook)).parameters)
