"""Everything dpo-plugins asks of mergekit, in one place.

The rest of the package talks about merge methods through
:class:`dpo_plugins.specs.MergeMethod` records and plain dicts; this module
turns those into mergekit objects:

- ``mergekit_methods()`` enumerates mergekit's own registry (so every method
  the installed mergekit ships is a built-in, with no hand-written list);
- ``method_info(record)`` describes a method's parameters and input rules
  for validating a configuration before anything heavy runs;
- ``schema_problems(config)`` runs mergekit's pydantic schema;
- ``run_merge(config, out_dir, record)`` runs the merge. A plugin method
  (``MergeMethod(fn=...)``) is wrapped as a mergekit method and registered
  with mergekit only for the duration of the merge, so it gets mergekit's
  whole configuration format (slices, gradients, filters, tokenizer
  alignment) and its streaming executor: tensors are read lazily from the
  parents' safetensors and written shard by shard, one parameter at a time.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import mergekit.merge_methods as mergekit_merge_methods
import torch
from mergekit.merge_methods import registry as mergekit_registry
from mergekit.merge_methods.base import (
    GroupMergeMethod,
    InputContract,
    MergeMethodSpec,
    ParameterScope,
    ParameterSpec,
    PerInputValues,
    TensorGroup,
)

from dpo_plugins.specs import MergeMethod

# mergekit's scopes, named for users
SCOPES = {
    ParameterScope.SHARED: "shared",
    ParameterScope.INPUT: "per-model",
    ParameterScope.NON_BASE: "per-model (not the base)",
}


@dataclass(frozen=True)
class ParameterInfo:
    """One parameter of a merge method, as the validator needs it."""

    name: str
    scope: str  # "shared", "per-model" or "per-model (not the base)"
    required: bool
    validate: Callable[[Any], Any]  # raises ValueError on a bad value


@dataclass(frozen=True)
class MethodInfo:
    """What a configuration must satisfy for one merge method."""

    name: str
    parameters: Dict[str, ParameterInfo]
    contract: InputContract

    def input_problem(self, inputs: Sequence[str], base: Optional[str]) -> Optional[str]:
        """Why these inputs (and base) do not suit the method, or None."""
        try:
            self.contract.validate_ids(list(inputs), base)
        except ValueError as error:
            return str(error)
        return None


def mergekit_methods() -> List[Tuple[str, str]]:
    """``(name, description)`` of every method in mergekit's registry."""
    found = []
    for method in mergekit_merge_methods.registered_methods():
        spec = method.spec
        description = spec.pretty_name or spec.name
        if spec.reference_url:
            description += f" ({spec.reference_url})"
        found.append((spec.name, f"mergekit: {description}"))
    return found


def method_info(record: MergeMethod) -> Optional[MethodInfo]:
    """Parameters and input contract of ``record``; None if mergekit lacks it."""
    method = _mergekit_method(record)
    if method is None:
        return None
    parameters = {
        p.name: ParameterInfo(
            name=p.name, scope=SCOPES[p.scope], required=p.required, validate=_validator(p)
        )
        for p in method.spec.parameters
    }
    return MethodInfo(name=record.name, parameters=parameters, contract=method.spec.contract)


def _validator(parameter: ParameterSpec) -> Callable[[Any], Any]:
    def validate(value):
        try:
            return parameter.validate(value)
        except Exception as error:  # pydantic.ValidationError is a ValueError
            messages = getattr(error, "errors", None)
            raise ValueError(messages()[0]["msg"] if messages else str(error)) from None

    return validate


def _mergekit_method(record: MergeMethod):
    if record.fn is not None:
        return PluginMergeMethod(record)
    try:
        return mergekit_merge_methods.get(record.mergekit_method)
    except RuntimeError:
        return None


class PluginMergeMethod(GroupMergeMethod):
    """A plugin's ``fn(tensors, weights, **params)`` as a mergekit method.

    Every model takes a ``weight`` (default 1.0), like mergekit's ``linear``;
    the record's ``params`` become shared parameters with those defaults.
    """

    def __init__(self, record: MergeMethod):
        self.record = record
        self.spec = MergeMethodSpec(
            name=record.name,
            pretty_name=record.description or record.name,
            parameters=(
                ParameterSpec("weight", float, ParameterScope.INPUT, default=1.0),
                *(
                    ParameterSpec(name, _value_type(default), ParameterScope.SHARED, default=default)
                    for name, default in record.params.items()
                ),
            ),
        )

    def merge_group(self, group: TensorGroup, /, weight: PerInputValues, **params) -> torch.Tensor:
        tensors = [entry.tensor for entry in group.entries]
        return self.record.fn(tensors, weight.values_for(group.entries), **params)


def _value_type(default: Any) -> Any:
    return Any if default is None else type(default)


def config_fields() -> Dict[str, frozenset]:
    """Allowed keys of each mergekit configuration object, by object name."""
    from mergekit.config import (
        InputModelDefinition,
        InputSliceDefinition,
        MergeConfiguration,
        OutputModuleDefinition,
        OutputSliceDefinition,
    )
    from mergekit.tokenizer.config import TokenizerConfig

    return {
        name: frozenset(model.model_fields)
        for name, model in {
            "config": MergeConfiguration,
            "model": InputModelDefinition,
            "slice": OutputSliceDefinition,
            "source": InputSliceDefinition,
            "module": OutputModuleDefinition,
            "tokenizer": TokenizerConfig,
        }.items()
    }


def schema_problems(config: Dict[str, Any]) -> List[Tuple[tuple, str]]:
    """mergekit's own schema check: ``(location, message)`` for each problem."""
    import pydantic
    from mergekit.config import MergeConfiguration

    try:
        MergeConfiguration.model_validate(config)
    except pydantic.ValidationError as error:
        return [(tuple(item["loc"]), item["msg"]) for item in error.errors()]
    except Exception as error:  # mergekit's model validators raise RuntimeError
        return [((), str(error))]
    return []


@contextmanager
def _available_to_mergekit(method) -> Iterator[None]:
    """Make a plugin method findable by name inside mergekit, for one merge."""
    methods = mergekit_registry._METHODS
    previous = methods.get(method.spec.name)
    methods[method.spec.name] = method
    try:
        yield
    finally:
        if previous is None:
            methods.pop(method.spec.name, None)
        else:
            methods[method.spec.name] = previous


# mergekit holds output tensors in memory until a shard is full (its
# default: 5e9 bytes); smaller shards keep a merge's memory flat.
SHARD_BYTES = 1_000_000_000


def run_merge(config: Dict[str, Any], out_dir: Path, record: MergeMethod, *, seed: Optional[int] = None,
              shard_bytes: int = SHARD_BYTES) -> None:
    """Merge as ``config`` says into ``out_dir`` (which must exist).

    ``config`` is a mergekit configuration whose model references are local
    directories; its ``merge_method`` is replaced by the method that
    ``record`` names inside mergekit. Inputs are memory-mapped and read one
    tensor at a time; outputs are written every ``shard_bytes``.
    """
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge as mergekit_run_merge

    config = dict(config, merge_method=record.mergekit_method or record.name)
    merge_config = MergeConfiguration.model_validate(config)
    options = MergeOptions(
        device="auto",
        copy_tokenizer=True,
        quiet=True,
        random_seed=seed,
        write_model_card=True,
        safe_serialization=True,
        out_shard_size=shard_bytes,
    )
    source = yaml.safe_dump(config, sort_keys=False)
    if record.fn is None:
        mergekit_run_merge(merge_config, str(out_dir), options=options, config_source=source)
        return
    with _available_to_mergekit(PluginMergeMethod(record)):
        mergekit_run_merge(merge_config, str(out_dir), options=options, config_source=source)
