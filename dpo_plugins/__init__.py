"""dpo-plugins: a pluggy host for DPO with TRL.

The public API plugins and users build on. Importing this package is cheap:
no torch, transformers or TRL (those load inside adapters and hook bodies).
"""

from .errors import (
    CheckFailed,
    ConfigError,
    DpoPluginsError,
    DuplicateNameError,
    HealthCheckError,
    PluginError,
    RecordError,
    SelfReferenceError,
    StageFailed,
    UnknownNameError,
    WorkflowStopped,
)
from .hookspecs import hookimpl, hookspec
from .plugins import (
    get_format,
    get_formats,
    get_judge,
    get_judges,
    get_loss,
    get_losses,
    get_merge_method,
    get_merge_methods,
    get_pair_builder,
    get_pair_builders,
    load_module,
    load_plugins,
)
from .records import PreferenceRecord, Problem
from .specs import (Checkpoint, CheckResult, Format, Judge, Loss, LossBatch, MergeMethod, PairBuilder, PairLogps,
                    StageInfo)

__version__ = "0.1.0"

__all__ = [
    "CheckFailed",
    "CheckResult",
    "Checkpoint",
    "ConfigError",
    "DpoPluginsError",
    "DuplicateNameError",
    "Format",
    "HealthCheckError",
    "Judge",
    "Loss",
    "LossBatch",
    "MergeMethod",
    "PairBuilder",
    "PairLogps",
    "PluginError",
    "PreferenceRecord",
    "Problem",
    "RecordError",
    "SelfReferenceError",
    "StageFailed",
    "StageInfo",
    "UnknownNameError",
    "WorkflowStopped",
    "get_format",
    "get_formats",
    "get_judge",
    "get_judges",
    "get_loss",
    "get_losses",
    "get_merge_method",
    "get_merge_methods",
    "get_pair_builder",
    "get_pair_builders",
    "hookimpl",
    "hookspec",
    "load_module",
    "load_plugins",
]
