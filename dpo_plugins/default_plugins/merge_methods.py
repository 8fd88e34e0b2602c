"""Built-in merge methods: every method the installed mergekit ships.

The list comes from mergekit's own registry, so upgrading mergekit brings
its new methods along. Each record names its mergekit method; ``dpo merge``
runs it through mergekit (``dpo_plugins.adapters.mergekit``).
"""

from __future__ import annotations

from dpo_plugins.hookspecs import hookimpl
from dpo_plugins.specs import MergeMethod


@hookimpl
def register_merge_methods():
    from dpo_plugins.adapters.mergekit import mergekit_methods

    for name, description in mergekit_methods():
        yield MergeMethod(name=name, mergekit_method=name, description=description)
