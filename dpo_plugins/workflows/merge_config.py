"""A mergekit configuration, validated up front: every problem found before a weight is read.

The configuration is mergekit's format verbatim, with two additions: model
references may use dpo-plugins aliases (``smollm2``), and ``merge_method``
may name any registered merge method, a plugin's included.

Everything that can be checked without loading weights is checked first and
reported together, in seconds: an unknown method (with the nearest name),
unknown keys, missing models, architectures or vocabularies that cannot be
merged, unknown, misplaced, missing or ill-typed parameters, the method's
rules on inputs (e.g. slerp needs a base and exactly two models), bad
dtypes, and an occupied output directory.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from dpo_plugins.atomic import check_output
from dpo_plugins.errors import ConfigError, DpoPluginsError, did_you_mean
from dpo_plugins.plugins import get_merge_methods
from dpo_plugins.specs import MergeMethod
from dpo_plugins.workflows.config import ConfigChecker, JsonPath, YamlFile, load_yaml

DTYPES = ("float16", "bfloat16", "float32", "float64")
# config.json fields that must agree for tensors to line up
SHAPE_KEYS = ("architectures", "model_type", "hidden_size", "intermediate_size",
              "num_attention_heads", "num_key_value_heads", "head_dim")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class MergePlan:
    """A validated merge: everything ``merge_into`` needs."""

    config: Dict[str, Any]  # mergekit's format, every model reference a local directory
    method: MergeMethod
    parents: Dict[str, Path]  # each model reference as written -> its directory, in order
    donor: Path  # where a missing tokenizer / chat template / generation config comes from
    dtype: Optional[str]  # the dtype the merged weights must have (out_dtype, else dtype)


def load_merge_plan(path, *, output: Optional[Path] = None, replace: bool = False) -> MergePlan:
    """Read and validate a merge configuration file; raise listing every problem."""
    source = load_yaml(path)
    return plan_merge(source, source.data, output=output, replace=replace)


def plan_merge(source: YamlFile, data: Any, *, output: Optional[Path] = None, replace: bool = False) -> MergePlan:
    """Validate ``data`` (the content of ``source``) as a merge configuration.

    Raises :class:`ConfigError` with one ``PATH:LINE: json.path: message``
    line per problem, in line order.
    """
    plan, problems = check_merge_section(source, data)
    problems = [text for _, text in sorted(problems, key=lambda item: item[0])]
    if output is not None:
        try:
            check_output(output, folder=True, force=replace,
                         inputs=[source.path, *merge_inputs(plan)])
            if not replace and Path(output).is_dir() and any(Path(output).iterdir()):  # even an earlier merge's
                raise DpoPluginsError(f"{output} already exists and is not empty (remove it, or use --force)")
        except DpoPluginsError as error:
            problems.append(f"--output: {error}")
    if problems:
        raise ConfigError(problems)
    return plan


def merge_inputs(plan: Optional[MergePlan]) -> List[Path]:
    """Every model directory a merge reads (each parent, an adapter's base included): no output may touch them."""
    from dpo_plugins.adapters.models import model_input_paths

    return [path for parent in (plan.parents.values() if plan else ()) for path in model_input_paths(str(parent))]


def check_merge_section(source: YamlFile, data: Any, prefix: JsonPath = ()) -> Tuple[Optional[MergePlan], List[Tuple[int, str]]]:
    """Validate a merge configuration found at ``prefix`` in ``source``.

    Returns the plan (None when there are problems) and every problem as
    ``(line, "PATH:LINE: json.path: message")``, for callers that validate
    a larger file (``dpo anneal``).
    """
    validator = _MergeChecker(source, prefix)
    plan = validator.validate(data)
    return (None if validator.problems else plan), validator.problems


class _MergeChecker(ConfigChecker):
    """Collects every problem in one merge configuration."""

    # -- the whole configuration ------------------------------------------

    def validate(self, data: Any) -> Optional[MergePlan]:
        if not isinstance(data, dict):
            self.problem((), "a merge configuration must be a mapping (mergekit's format)")
            return None
        from dpo_plugins.adapters.mergekit import config_fields, method_info, schema_problems

        fields = config_fields()
        self.unknown_keys(data, (), fields["config"], "merge configuration")
        self.unknown_nested_keys(data, fields)
        method = self.method(data)
        info = method_info(method) if method else None
        if method and info is None:
            self.problem(("merge_method",), f"{method.name!r} names mergekit method {method.mergekit_method!r}, "
                                            "which the installed mergekit does not have")
        parents, config = self.resolve_models(data)
        for key in ("dtype", "out_dtype"):
            if data.get(key) is not None and str(data[key]).removeprefix("torch.") not in DTYPES:
                self.problem((key,), f"unknown dtype {data[key]!r}; use one of {', '.join(DTYPES)}")
        for location, message in schema_problems(config):
            path = self.data_path(data, location)
            # merge_method and parameters get their own, clearer checks
            if "parameters" not in path and path[:1] != ("merge_method",):
                self.problem(path, message)
        if not self.problems:
            self.compatibility(data, parents)
        if info is not None and not self.problems:
            self.inputs(data, info)
        if info is not None:
            self.parameters(data, info)
        if self.problems or method is None:
            return None
        dtype = data.get("out_dtype") or data.get("dtype")
        donor = self.reference_path(data["base_model"]) if data.get("base_model") else next(iter(parents.values()))
        return MergePlan(config=config, method=method, parents=parents, donor=donor,
                         dtype=str(dtype).removeprefix("torch.") if dtype else None)

    def unknown_keys(self, mapping: Any, path: JsonPath, allowed: frozenset, what: str) -> None:
        if not isinstance(mapping, dict):
            return
        for key in mapping:
            if key not in allowed:
                self.problem(path + (key,), f"unknown key in a {what}{did_you_mean(str(key), sorted(allowed))}"
                                            f" (allowed: {', '.join(sorted(allowed))})")

    def unknown_nested_keys(self, data: dict, fields: Dict[str, frozenset]) -> None:
        for i, model in enumerate(_list(data.get("models"))):
            self.unknown_keys(model, ("models", i), fields["model"], "models entry")
        for i, out_slice in enumerate(_list(data.get("slices"))):
            self.unknown_keys(out_slice, ("slices", i), fields["slice"], "slices entry")
            for j, source in enumerate(_list(_get(out_slice, "sources"))):
                self.unknown_keys(source, ("slices", i, "sources", j), fields["source"], "slice source")
        if isinstance(data.get("tokenizer"), dict):
            self.unknown_keys(data["tokenizer"], ("tokenizer",), fields["tokenizer"], "tokenizer section")

    def method(self, data: dict) -> Optional[MergeMethod]:
        name = data.get("merge_method")
        if name is None:
            self.problem(("merge_method",) if "merge_method" in data else (), "merge_method is required")
            return None
        methods = get_merge_methods()
        if not isinstance(name, str) or name not in methods:
            self.problem(("merge_method",), f"unknown merge method {name!r}{did_you_mean(str(name), sorted(methods))}"
                                            f" (available: {', '.join(sorted(methods))})")
            return None
        return methods[name]

    @staticmethod
    def data_path(data: Any, location: Sequence) -> JsonPath:
        """The part of a pydantic error location that exists in ``data``."""
        path, node = [], data
        for part in location:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                break
            path.append(part)
        return tuple(path)

    # -- models ------------------------------------------------------------

    def resolve_models(self, data: dict) -> Tuple[Dict[str, Path], dict]:
        """Resolve every model reference to a local checkpoint directory."""
        config = copy.deepcopy(data)
        parents: Dict[str, Path] = {}
        for path, reference in _model_references(data):
            directory = self.checkpoint_directory(path, reference)
            if directory is None:
                continue
            _set(config, path, str(directory) if not isinstance(reference, dict) else dict(reference, model=str(directory)))
            if not _is_tokenizer_path(path):
                parents.setdefault(_reference_name(reference), directory)
        return parents, config

    def checkpoint_directory(self, path: JsonPath, reference: Any) -> Optional[Path]:
        from dpo_plugins.adapters.models import resolve_model

        name = _reference_name(reference)
        if not isinstance(name, str) or not name:
            self.problem(path, f"a model reference must be a local directory or an alias, not {reference!r}")
            return None
        if "+" in name:
            self.problem(path, f"{name!r}: LoRA references (model+lora) are not supported; merge the adapter first")
            return None
        try:
            directory = resolve_model(name)
        except DpoPluginsError as error:
            self.problem(path, str(error))
            return None
        if not (directory / "config.json").is_file():
            self.problem(path, f"{name!r} ({directory}) is not a model checkpoint: it has no config.json")
            return None
        if not any(any(directory.glob(pattern)) for pattern in WEIGHT_PATTERNS):
            self.problem(path, f"{name!r} ({directory}) has no weights (*.safetensors or pytorch_model*.bin)")
            return None
        return directory.resolve()

    def reference_path(self, reference: Any) -> Path:
        from dpo_plugins.adapters.models import resolve_model

        return resolve_model(_reference_name(reference)).resolve()

    def compatibility(self, data: dict, parents: Dict[str, Path]) -> None:
        """Architectures and vocabularies must line up with the donor's."""
        locations = {}
        for path, reference in _model_references(data):
            locations.setdefault(_reference_name(reference), path)
        references = [name for name in parents if name in locations]
        if len(references) < 2:
            return
        base = _reference_name(data["base_model"]) if data.get("base_model") else references[0]
        keys = SHAPE_KEYS + (("num_hidden_layers",) if data.get("models") else ())
        configs = {name: json.loads((parents[name] / "config.json").read_text()) for name in references}
        aligned = bool(data.get("tokenizer_source") or data.get("tokenizer"))
        for name in references:
            if name == base:
                continue
            mine, theirs = configs[name], configs[base]
            differences = [f"{key} {mine.get(key)!r} vs {theirs.get(key)!r}" for key in keys if mine.get(key) != theirs.get(key)]
            if differences:
                self.problem(locations[name], f"{name!r} cannot be merged with {base!r}: {', '.join(differences)}")
            elif aligned:
                continue
            elif mine.get("vocab_size") != theirs.get("vocab_size"):
                self.problem(locations[name], f"{name!r} has vocab_size {mine.get('vocab_size')} but {base!r} has "
                                              f"{theirs.get('vocab_size')}; set tokenizer_source (base, union or a "
                                              "model) so mergekit aligns the embeddings")
            elif _vocabulary(parents[name]) != _vocabulary(parents[base]):
                self.problem(locations[name], f"{name!r} has a different tokenizer vocabulary than {base!r}; set "
                                              "tokenizer_source (base, union or a model) so mergekit aligns the embeddings")

    def inputs(self, data: dict, info) -> None:
        """The method's own rules on how many inputs, and whether a base is needed."""
        base = _reference_name(data["base_model"]) if data.get("base_model") else None
        if data.get("models"):
            names = [_reference_name(m["model"]) for m in data["models"]]
            if base is not None and base not in names:
                names.append(base)
            groups = [(("models",), names, base)]
        else:
            groups = [
                (("slices", i), [_reference_name(s["model"]) for s in _list(_get(out_slice, "sources"))],
                 _reference_name(out_slice["base_model"]) if _get(out_slice, "base_model") else base)
                for i, out_slice in enumerate(_list(data.get("slices")))
            ]
        for path, names, group_base in groups:
            message = info.input_problem(names, group_base)
            if message:
                self.problem(path, f"{info.name}: {message}")

    # -- parameters ----------------------------------------------------------

    def parameters(self, data: dict, info) -> None:
        """Every parameter known, in a place mergekit reads it, well-typed; none missing."""
        everywhere = {"shared", "per-model", "per-model (not the base)"}
        per_model = everywhere - {"shared"}
        self.parameter_block(data.get("parameters"), ("parameters",), info, everywhere)
        for i, model in enumerate(_list(data.get("models"))):
            self.parameter_block(_get(model, "parameters"), ("models", i, "parameters"), info, per_model)
        for i, out_slice in enumerate(_list(data.get("slices"))):
            self.parameter_block(_get(out_slice, "parameters"), ("slices", i, "parameters"), info, everywhere)
            for j, source in enumerate(_list(_get(out_slice, "sources"))):
                self.parameter_block(_get(source, "parameters"), ("slices", i, "sources", j, "parameters"), info, per_model)
        for name, module in (data.get("modules") or {}).items() if isinstance(data.get("modules"), dict) else ():
            self.parameter_block(_get(module, "parameters"), ("modules", name, "parameters"), info, everywhere)
        self.required_parameters(data, info)
        self.weights_not_all_zero(data)

    def weights_not_all_zero(self, data: dict) -> None:
        """Per-model weights that are all 0 normalise to 0/0: every merged tensor would be NaN."""
        weights = [_get(_get(model, "parameters"), "weight") for model in _list(data.get("models"))]
        numbers = [w for w in weights if isinstance(w, (int, float)) and not isinstance(w, bool)]
        if weights and len(numbers) == len(weights) and not any(numbers):
            self.problem(("models",), "every model's weight is 0: the merge would divide by a zero sum; "
                                      "give at least one model a non-zero weight")

    def parameter_block(self, settings: Any, path: JsonPath, info, allowed_scopes: set) -> None:
        if settings is None:
            return
        if not isinstance(settings, dict):
            self.problem(path, "parameters must be a mapping of parameter name to value")
            return
        for name, setting in settings.items():
            parameter = info.parameters.get(name)
            if parameter is None:
                known = sorted(info.parameters)
                self.problem(path + (name,), f"{info.name} has no parameter {name!r}{did_you_mean(str(name), known)}"
                                             f" (its parameters: {', '.join(known) or 'none'})")
            elif parameter.scope not in allowed_scopes:
                self.problem(path + (name,), f"{name!r} is a shared parameter of {info.name}: mergekit ignores it "
                                             "here; set it under the top-level (or slice) parameters")
            else:
                for value_path, value in _setting_values(setting, path + (name,)):
                    try:
                        parameter.validate(value)
                    except ValueError as error:
                        self.problem(value_path, f"bad value {value!r} for {info.name} parameter {name!r}: {error}")
                        continue
                    if isinstance(value, float) and not math.isfinite(value):
                        self.problem(value_path, f"{info.name} parameter {name!r} must be a finite number, "
                                                 f"not {value!r}")

    def required_parameters(self, data: dict, info) -> None:
        top = _keys(data.get("parameters"))
        base = _reference_name(data["base_model"]) if data.get("base_model") else None
        for parameter in info.parameters.values():
            if not parameter.required:
                continue
            if data.get("models"):
                if parameter.scope == "shared" and parameter.name not in top:
                    self.problem(("parameters",) if "parameters" in data else (),
                                 f"{info.name} needs the shared parameter {parameter.name!r} under parameters")
                elif parameter.scope != "shared" and parameter.name not in top:
                    for i, model in enumerate(_list(data["models"])):
                        skip_base = parameter.scope != "per-model" and _reference_name(_get(model, "model")) == base
                        if not skip_base and parameter.name not in _keys(_get(model, "parameters")):
                            self.problem(("models", i), f"{info.name} needs {parameter.name!r} for this model "
                                                        "(under its parameters, or for all under the top-level parameters)")
            for i, out_slice in enumerate(_list(data.get("slices"))):
                here = top | _keys(_get(out_slice, "parameters"))
                if parameter.name in here:
                    continue
                if parameter.scope == "shared":
                    self.problem(("slices", i), f"{info.name} needs the shared parameter {parameter.name!r}")
                    continue
                for j, source in enumerate(_list(_get(out_slice, "sources"))):
                    if parameter.name not in _keys(_get(source, "parameters")):
                        self.problem(("slices", i, "sources", j), f"{info.name} needs {parameter.name!r} for this source")


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


def _keys(mapping: Any) -> set:
    return set(mapping) if isinstance(mapping, dict) else set()


def _set(data: Any, path: JsonPath, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _reference_name(reference: Any) -> Any:
    """``"smollm2"`` or ``{"model": "smollm2"}`` -> ``"smollm2"``."""
    return reference.get("model") if isinstance(reference, dict) else reference


def _is_tokenizer_path(path: JsonPath) -> bool:
    return path[0] in ("tokenizer_source", "tokenizer")


def _model_references(data: dict) -> Iterator[Tuple[JsonPath, Any]]:
    """Every place a mergekit configuration names a model, with its path."""
    if data.get("base_model") is not None:
        yield ("base_model",), data["base_model"]
    for i, model in enumerate(_list(data.get("models"))):
        if isinstance(model, dict) and "model" in model:
            yield ("models", i, "model"), model["model"]
    yield from _slice_references(data.get("slices"), ("slices",))
    modules = data.get("modules")
    for name, module in modules.items() if isinstance(modules, dict) else ():
        for i, model in enumerate(_list(_get(module, "models"))):
            if isinstance(model, dict) and "model" in model:
                yield ("modules", name, "models", i, "model"), model["model"]
        yield from _slice_references(_get(module, "slices"), ("modules", name, "slices"))
    if data.get("tokenizer_source") not in (None, "union", "base"):
        yield ("tokenizer_source",), data["tokenizer_source"]
    source = _get(data.get("tokenizer"), "source")
    if source not in (None, "union", "base"):
        yield ("tokenizer", "source"), source


def _slice_references(slices: Any, path: JsonPath) -> Iterator[Tuple[JsonPath, Any]]:
    for i, out_slice in enumerate(_list(slices)):
        if _get(out_slice, "base_model") is not None:
            yield path + (i, "base_model"), out_slice["base_model"]
        for j, source in enumerate(_list(_get(out_slice, "sources"))):
            if isinstance(source, dict) and "model" in source:
                yield path + (i, "sources", j, "model"), source["model"]


def _setting_values(setting: Any, path: JsonPath) -> Iterator[Tuple[JsonPath, Any]]:
    """The scalars inside a mergekit parameter setting: a value, a gradient
    (list of values), or ``{value, filter}`` entries (alone or in a list)."""
    if isinstance(setting, dict):
        if "value" not in setting:
            yield path, setting  # the parameter's validator reports the shape
        else:
            yield from _setting_values(setting["value"], path + ("value",))
    elif isinstance(setting, list):
        for i, item in enumerate(setting):
            yield from _setting_values(item, path + (i,))
    else:
        yield path, setting


def _vocabulary(directory: Path) -> Optional[str]:
    """A fingerprint of the token -> id mapping in tokenizer.json (None without one)."""
    import hashlib

    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer.get("model", {}).get("vocab")
    added = sorted((t.get("id"), t.get("content")) for t in tokenizer.get("added_tokens", []))
    return hashlib.sha256(json.dumps([vocab, added], sort_keys=True).encode()).hexdigest()
