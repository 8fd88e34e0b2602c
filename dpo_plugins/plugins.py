"""The plugin manager: which plugins are loaded, and what they registered.

Plugins come from four places, loaded in this order the first time anything
asks for a registry (``load_plugins`` is lazy and idempotent):

1. the built-ins in ``dpo_plugins/default_plugins/``;
2. installed packages' entry points in the group ``dpo_plugins``, unless
   ``DPO_DISABLE_PLUGIN_AUTOLOAD`` is set (pytest's convention);
3. modules named in ``DPO_PLUGINS=mod1,mod2``;
4. modules named with ``--plugin MOD`` on the command line (``load_module``).

Registries are collected per kind by calling each plugin's registration hook
separately, so a duplicate name or a crash can name the plugin responsible.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Dict, Iterator, Tuple

import pluggy

from . import hookspecs
from .errors import DuplicateNameError, PluginError, UnknownNameError
from .specs import Format, Judge, Loss, MergeMethod, PairBuilder

ENTRY_POINT_GROUP = "dpo_plugins"

DEFAULT_PLUGINS = (
    "dpo_plugins.default_plugins.format_converters",
    "dpo_plugins.default_plugins.losses",
    "dpo_plugins.default_plugins.reference_free_losses",
    "dpo_plugins.default_plugins.research_losses",
    "dpo_plugins.default_plugins.judges",
    "dpo_plugins.default_plugins.alpaca_eval_judge",
    "dpo_plugins.default_plugins.merge_methods",
    "dpo_plugins.default_plugins.checks",
    "dpo_plugins.default_plugins.pair_builders",
)

# kind -> (registration hook, the record type that hook must yield)
KINDS = {
    Format.kind: ("register_formats", Format),
    Loss.kind: ("register_losses", Loss),
    MergeMethod.kind: ("register_merge_methods", MergeMethod),
    Judge.kind: ("register_judges", Judge),
    PairBuilder.kind: ("register_pair_builders", PairBuilder),
}

pm = pluggy.PluginManager("dpo_plugins")
pm.add_hookspecs(hookspecs)
_loaded = False


@dataclass(frozen=True)
class Registration:
    """A registered record and the plugin that provided it."""

    spec: Any
    provider: str


def load_plugins() -> None:
    """Load built-in, entry-point and ``DPO_PLUGINS`` plugins, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in DEFAULT_PLUGINS:
        load_module(name)
    if not os.environ.get("DPO_DISABLE_PLUGIN_AUTOLOAD"):
        _import_entry_points()
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as error:
            raise PluginError(
                f"loading plugins from entry-point group {ENTRY_POINT_GROUP!r} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        _check_hook_names("an entry-point plugin")
    for name in os.environ.get("DPO_PLUGINS", "").split(","):
        if name.strip():
            load_module(name.strip())


def load_module(name: str) -> None:
    """Import module ``name`` and register it as a plugin.

    A no-op when it is already registered, also under another name (an
    installed package's entry point named with ``--plugin`` as well).
    """
    if pm.get_plugin(name) is not None:
        return
    try:
        module = importlib.import_module(name)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # SystemExit too: a plugin must not end the CLI without a word
        raise PluginError(f"cannot load plugin module {name!r}: {_failure(error)}") from error
    if pm.is_registered(module):
        return
    pm.register(module, name=name)
    _check_hook_names(f"plugin {name!r}")


def _import_entry_points() -> None:
    """Import every entry point of the group first, so one that fails is named with its distribution.

    pluggy's loader imports them too but lets a failure (a ``sys.exit`` at
    import included) escape without saying which one; the modules imported
    here are cached, so pluggy's second import costs nothing.
    """
    from importlib import metadata

    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except KeyboardInterrupt:
            raise
        except BaseException as error:
            dist = entry_point.dist
            owner = f" of {dist.metadata['Name']} {dist.version}" if dist is not None else ""
            raise PluginError(
                f"cannot load plugin {entry_point.name!r} (entry point {entry_point.value}{owner}): {_failure(error)}"
            ) from error


def _failure(error: BaseException) -> str:
    """What a plugin's code raised, in words; an exit is named as such (its message would be just a number)."""
    if isinstance(error, SystemExit):
        return f"SystemExit({error.code!r}): a plugin must not exit the program"
    return f"{type(error).__name__}: {error}"


def _check_hook_names(who: str) -> None:
    """Fail on a misspelled hook instead of silently never calling it."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f"{who}: {error}") from error


def plugin_of_file(filename: str) -> str | None:
    """The provider of the registered third-party plugin whose module is ``filename``, if any."""
    for plugin in pm.get_plugins():
        path = getattr(plugin, "__file__", None) or getattr(sys.modules.get(type(plugin).__module__), "__file__", None)
        if path and os.path.abspath(path) == os.path.abspath(filename) and not provider_of(plugin).startswith("dpo_plugins."):
            return provider_of(plugin)
    return None


def provider_of(plugin: object) -> str:
    """``module (distribution version)`` for a registered plugin."""
    name = pm.get_name(plugin) or repr(plugin)
    module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
    label = name if name == module else f"{name} ({module})" if module else name
    dist = _distribution_of(plugin, module)
    return f"{label} [{dist}]" if dist else label


def _distribution_of(plugin: object, module: str) -> str | None:
    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            return f"{dist.project_name} {dist.version}"
    return _distribution_of_module(module.split(".")[0])


@functools.lru_cache(maxsize=None)
def _distribution_of_module(top_level: str) -> str | None:
    """Scanning every installed distribution is slow (~0.2 s): do it once per name."""
    from importlib import metadata

    for dist_name in _packages_distributions().get(top_level, ()):
        return f"{dist_name} {metadata.version(dist_name)}"
    if top_level == "dpo_plugins":  # an editable install maps no files to us
        return f"dpo-plugins {metadata.version('dpo-plugins')}"
    return None


@functools.lru_cache(maxsize=1)
def _packages_distributions():
    from importlib import metadata

    return metadata.packages_distributions()


def records_from_each_plugin(hook_name: str, record_type: type, **kwargs) -> Iterator[Tuple[str, Any]]:
    """``(provider, record)`` for every record each plugin's ``hook_name`` yields.

    Each implementation is called on its own so that a crash, or a record of
    the wrong type, raises a :class:`PluginError` naming the plugin. Plugins
    come in registration order (built-ins first).
    """
    load_plugins()
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        provider = provider_of(impl.plugin)
        try:
            records = list(impl.function(**kwargs) or ())
        except KeyboardInterrupt:
            raise
        except BaseException as error:
            raise PluginError(f"plugin {provider} failed in {hook_name}(): {_failure(error)}") from error
        for record in records:
            if not isinstance(record, record_type):
                raise PluginError(
                    f"plugin {provider}: {hook_name}() yielded {record!r}, "
                    f"expected a {record_type.__name__}"
                )
            yield provider, record


def registrations(kind: str) -> Dict[str, Registration]:
    """Every record of ``kind`` by name, with its provider.

    Raises :class:`DuplicateNameError` naming both providers when two plugins
    register the same name, and :class:`PluginError` naming the plugin when
    its hook raises or yields something that is not a ``kind`` record.
    """
    hook_name, record_type = KINDS[kind]
    found: Dict[str, Registration] = {}
    for provider, record in records_from_each_plugin(hook_name, record_type):
        if record.name in found:
            raise DuplicateNameError(
                f"{kind} {record.name!r} is registered twice: by "
                f"{found[record.name].provider} and by {provider}"
            )
        found[record.name] = Registration(record, provider)
    return found


def lookup_registration(kind: str, name: str) -> Registration:
    """The record of ``kind`` called ``name`` with its provider, or an error listing the names."""
    found = registrations(kind)
    if name not in found:
        available = ", ".join(sorted(found)) or "(none)"
        raise UnknownNameError(f"unknown {kind} {name!r}; available: {available}")
    return found[name]


def lookup(kind: str, name: str) -> Any:
    """The record of ``kind`` called ``name``, or an error listing the names."""
    return lookup_registration(kind, name).spec


def get_formats() -> Dict[str, Format]:
    return {name: r.spec for name, r in registrations(Format.kind).items()}


def get_losses() -> Dict[str, Loss]:
    return {name: r.spec for name, r in registrations(Loss.kind).items()}


def get_merge_methods() -> Dict[str, MergeMethod]:
    return {name: r.spec for name, r in registrations(MergeMethod.kind).items()}


def get_judges() -> Dict[str, Judge]:
    return {name: r.spec for name, r in registrations(Judge.kind).items()}


def get_pair_builders() -> Dict[str, PairBuilder]:
    return {name: r.spec for name, r in registrations(PairBuilder.kind).items()}


def get_format(name: str) -> Format:
    return lookup(Format.kind, name)


def get_loss(name: str) -> Loss:
    return lookup(Loss.kind, name)


def get_merge_method(name: str) -> MergeMethod:
    return lookup(MergeMethod.kind, name)


def get_judge(name: str) -> Judge:
    return lookup(Judge.kind, name)


def get_pair_builder(name: str) -> PairBuilder:
    return lookup(PairBuilder.kind, name)
