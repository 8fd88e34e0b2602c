"""Which losses a run uses: looked up in the plugin registry, weighted, with their parameters.

``dpo train`` and :class:`~dpo_plugins.adapters.trl.PluginDPOTrainer` both
come here, once per run: :func:`select_losses` resolves the names in
``DPOConfig.loss_type`` and refuses TRL options that would not apply to
them, listing every problem at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from trl import DPOConfig

from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.params import typed_like
from dpo_plugins.plugins import get_loss

# DPOConfig fields that only TRL's own loss chain reads. TRL reads them always, so their value (TRL's
# default included) is handed to every selected loss that declares a parameter of the same name; a
# value other than TRL's default that no selected loss declares is an error.
TRL_LOSS_FIELDS = ("label_smoothing", "discopop_tau")


def select_losses(args, loss_params: Optional[Mapping[str, Any]], ref_model_given: bool) -> list["LossTerm"]:
    """The loss terms ``args`` (a ``DPOConfig``) selects, checked against the other options."""
    terms = resolve_losses(args.loss_type, args.loss_weights, loss_params, inherited_loss_params(args))
    problems = unsupported_options(args, terms, ref_model_given)
    if problems:
        raise DpoPluginsError("unsupported option combination:\n" + "\n".join(problems))
    return terms


@dataclass(frozen=True)
class LossTerm:
    """One selected loss: the registry record, its weight and its parameters."""

    name: str
    fn: Callable[..., Any]
    weight: float
    params: Mapping[str, Any]
    needs_reference: bool
    needs: frozenset = frozenset()  # Loss.needs and Loss.modifiers of the registry record
    modifiers: frozenset = frozenset()

    def describe(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        return f"{self.weight:g} * {self.name}({params})"


def resolve_losses(
    names: Sequence[str],
    weights: Optional[Sequence[float]] = None,
    params: Optional[Mapping[str, Any]] = None,
    inherited: Optional[Mapping[str, Any]] = None,
) -> list[LossTerm]:
    """Look up ``names`` in the registry and bind weights and parameters.

    ``params`` keys are ``key`` (every selected loss that declares ``key``)
    or ``loss.key`` (that loss only); a key no selected loss declares is an
    error. String values (from the command line) are converted to the type
    of the declared default. ``inherited`` holds values from TRL's own config
    fields (``label_smoothing``); they apply like ``params`` but only where a
    loss declares them (one at TRL's default that none declares is ignored),
    and explicit ``params`` win. Every problem is listed.
    """
    names = list(names)
    if not names:
        raise DpoPluginsError("no loss selected: give at least one --loss NAME")
    if weights is not None and len(weights) != len(names):
        raise DpoPluginsError(f"--loss-weights has {len(weights)} values for {len(names)} losses {names}")
    if len(set(names)) != len(names):
        raise DpoPluginsError(f"a loss is selected twice in {names}: give each once and weigh it with --loss-weights")
    specs = [get_loss(name) for name in names]
    problems: list[str] = []
    bound: list[dict[str, Any]] = [dict(spec.params) for spec in specs]
    for source, values in (("inherited", inherited or {}), ("explicit", params or {})):
        for key, value in values.items():
            target, _, param = key.rpartition(".")
            hits = [i for i, spec in enumerate(specs) if param in spec.params and target in ("", spec.name)]
            if not hits:
                if source == "inherited" and value == _trl_default(key):
                    continue
                if source == "explicit":
                    declared = "; ".join(f"{s.name}: {', '.join(s.params) or 'none'}" for s in specs)
                    problems.append(f"loss parameter {key!r} is not declared by the selected losses ({declared})")
                else:
                    problems.append(
                        f"{key}={value!r} only affects losses that declare {key!r}, and none of {names} does"
                    )
                continue
            for i in hits:
                try:
                    bound[i][param] = typed_like(specs[i].params[param], value)
                except ValueError as error:
                    problems.append(f"loss parameter {key!r} of {specs[i].name}: {error}")
    if problems:
        raise DpoPluginsError("\n".join(problems))
    weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    return [
        LossTerm(spec.name, spec.fn, weight, dict(values), spec.needs_reference, spec.needs, spec.modifiers)
        for spec, weight, values in zip(specs, weights, bound)
    ]


def inherited_loss_params(args) -> dict[str, Any]:
    """DPOConfig's TRL loss fields, set or not: TRL's loss chain reads them whatever they are, so a
    ``loss_type: robust`` config gets TRL's ``label_smoothing`` (0.0) here too, and an explicit 0 stays 0."""
    return {name: getattr(args, name) for name in TRL_LOSS_FIELDS}


def _trl_default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(DPOConfig) if f.name == name)


def trl_value_problems(terms: Sequence[LossTerm]) -> list[str]:
    """The parameter values ``DPOTrainer.__init__`` refuses for its own loss names, checked before any model
    loads (the plugin trainer shows TRL only settings it accepts, so TRL's own check never sees them)."""
    problems = []
    for term in terms:
        smoothing = term.params.get("label_smoothing")
        if term.name == "exo_pair" and not 0.0 < smoothing < 1.0:
            problems.append(f"exo_pair needs label_smoothing in (0, 1), got {smoothing} (TRL refuses 0 too; "
                            "the EXO paper uses 1e-3: --label-smoothing 1e-3)")
        if term.name == "robust" and not 0.0 <= smoothing < 0.5:
            problems.append(f"robust needs label_smoothing in [0, 0.5), got {smoothing}")
    return problems


def unsupported_options(args, terms: Sequence[LossTerm], ref_model_given: bool) -> list[str]:
    """TRL options that would silently not apply to plugin losses, or that contradict the losses."""
    from .modifiers import modifier_problems  # the modifiers the selected losses opt into

    problems = modifier_problems(args, terms) + trl_value_problems(terms)
    if not any(term.needs_reference for term in terms):
        names = ", ".join(term.name for term in terms)
        if ref_model_given:
            problems.append(f"a reference model was given, but the losses ({names}) use none")
        if args.precompute_ref_log_probs:
            problems.append(f"precompute_ref_log_probs: the losses ({names}) use no reference")
        if args.sync_ref_model:
            problems.append(f"sync_ref_model: the losses ({names}) use no reference")
    return problems
