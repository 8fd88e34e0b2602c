"""The small frozen records that registration hooks return.

Each record names one thing a plugin provides (a format, a loss, a merge
method, a judge, a pair builder). The host only reads them; plugins build them. ``kind`` is
the label ``dpo plugins`` shows.

This module imports nothing heavy: loss functions receive torch tensors, but
the records that describe them do not need torch to exist.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, ClassVar, FrozenSet, Mapping, Optional, Tuple


def _freeze(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Format:
    """A preference-data schema: one row of it <-> a canonical record.

    ``to_record(row: dict) -> PreferenceRecord`` reads one row (a JSON
    object); ``from_record(record) -> dict`` writes one. Either raises
    :class:`dpo_plugins.records.RecordError` listing every problem it found.
    ``detect(row) -> bool`` says whether a row looks like this schema; formats
    without it are never auto-detected.

    Two optional checks serve ``dpo validate``: ``lint(row)`` yields
    :class:`~dpo_plugins.records.Problem` warnings about a row that converts
    fine (e.g. fields the hosted service may reject), and
    ``check_file(summary)`` yields problems about the file as a whole (e.g. a
    minimum number of examples); ``summary`` has ``path``, ``rows`` (valid
    records) and ``size_bytes``.

    ``schema`` groups formats that read the same rows under different rules
    (the ``azure`` and ``openai`` profiles): ``dpo validate --profile P`` reads
    a file of P's schema under P's rules directly. ``max_example_tokens``: a
    service's limit on the tokens of one example, checked by ``dpo validate
    --model``.
    """

    kind: ClassVar[str] = "format"

    name: str
    to_record: Callable[[dict], Any]
    from_record: Callable[[Any], dict]
    detect: Optional[Callable[[dict], bool]] = None
    description: str = ""
    lint: Optional[Callable[[dict], Any]] = None
    check_file: Optional[Callable[[Any], Any]] = None
    schema: Optional[str] = None
    max_example_tokens: Optional[int] = None


# -- What a loss may ask for (``Loss.needs``) and opt into (``Loss.modifiers``) --
# "tokens": per-token policy log-probs and masks of both completions;
# "log_sum_sq_probs": per-token log sum_v p(v)^2 (WPO's statistic), computed inside the chunked LM head.
LOSS_NEEDS = frozenset({"tokens", "log_sum_sq_probs"})
# TRL's DPOConfig modifiers a loss can be run under: f_divergence_type (the loss reads
# ``chosen_scores``/``rejected_scores``), use_weighting (WPO: the trainer multiplies the loss's
# per-pair values by the pair's weight), ld_alpha (LD-DPO: the summed log-probs are length-desensitised).
LOSS_MODIFIERS = frozenset({"f_divergence", "weighting", "ld_alpha"})


@dataclass(frozen=True)
class PairLogps:
    """Per-pair log-prob sums: the one record from the forward to the loss to the eval.

    The packed and the plain forward return it (training and ``dpo eval``);
    a loss function sees it as its ``batch`` (:data:`LossBatch`, the local
    batch of pairs at once); the eval scores pairs from it.

    The first six fields are per-pair sums over completion tokens, shape
    ``(B,)`` (under ``ld_alpha`` the sums are LD-DPO's length-desensitised
    ones, for the reference too). ``ref_*`` are ``None`` when the run has no
    reference model (a loss with ``needs_reference=False``) and in a single
    model's sums (:meth:`without_reference`). The lengths count the
    completion tokens that survive TRL's truncation (what IPO divides by).
    The eval's sums are float64; in training, the forward's own dtype.

    The rest is optional (``None`` unless some selected loss asks for it in
    ``Loss.needs``, so a loss that reads only sums costs what it did before):

    * ``chosen_scores`` / ``rejected_scores`` ``(B,)``: the log-ratios
      ``logps - ref_logps`` mapped through the run's f-divergence (TRL's
      ``f_divergence_type``; equal to the log-ratios under ``reverse_kl``).
      Present whenever there is a reference.
    * ``chosen_token_logps`` / ``rejected_token_logps`` ``(B, T)`` with
      boolean ``chosen_token_mask`` / ``rejected_token_mask`` (``needs``
      ``"tokens"``): the policy's log-prob of every completion token, with
      gradient; masked-out entries are 0. The masked-in entries of a row are
      that completion's tokens in order (columns are not otherwise meaningful).
    * ``chosen_token_log_sum_sq_probs`` / ``rejected_...`` ``(B, T)``
      (``needs`` ``"log_sum_sq_probs"``): ``log sum_v p(v)^2`` of the policy's
      next-token distribution at each completion token, without gradient.
    """

    chosen_logps: Any
    rejected_logps: Any
    ref_chosen_logps: Any
    ref_rejected_logps: Any
    chosen_lengths: Any
    rejected_lengths: Any
    chosen_scores: Any = None
    rejected_scores: Any = None
    chosen_token_logps: Any = None
    rejected_token_logps: Any = None
    chosen_token_mask: Any = None
    rejected_token_mask: Any = None
    chosen_token_log_sum_sq_probs: Any = None
    rejected_token_log_sum_sq_probs: Any = None

    @classmethod
    def without_reference(cls, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths) -> "PairLogps":
        """One model's sums, with no reference beside them."""
        return cls(chosen_logps, rejected_logps, None, None, chosen_lengths, rejected_lengths)


# What a loss function is given: the public name of the same record.
LossBatch = PairLogps


@dataclass(frozen=True)
class Loss:
    """A DPO loss variant: ``fn(batch: LossBatch, beta, **params)``.

    ``fn`` returns one value per pair, shape ``(B,)`` (the trainer averages
    it), or ``(per_pair, metrics)`` where ``metrics`` maps names to scalars
    that are logged as ``NAME/METRIC`` next to TRL's metrics. ``fn`` sees the
    whole local batch at once, so a batch-level loss (one that sorts or
    normalises across pairs) is an ordinary loss.

    ``params`` holds the defaults of the loss's own parameters; users
    override them with ``--loss-param k=v``. A loss that never reads the
    reference log-probs sets ``needs_reference=False`` and training then
    loads no reference model. ``needs`` (a subset of :data:`LOSS_NEEDS`)
    asks the forward for token-level fields of :class:`LossBatch`;
    ``modifiers`` (a subset of :data:`LOSS_MODIFIERS`) lists the TRL
    modifiers the loss is valid under: the others are refused when set.
    """

    kind: ClassVar[str] = "loss"

    name: str
    fn: Callable[..., Any]
    needs_reference: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    needs: FrozenSet[str] = frozenset()
    modifiers: FrozenSet[str] = frozenset()

    def __post_init__(self):
        object.__setattr__(self, "params", _freeze(self.params))
        for attribute, allowed in (("needs", LOSS_NEEDS), ("modifiers", LOSS_MODIFIERS)):
            values = frozenset(getattr(self, attribute))
            if values - allowed:
                raise ValueError(
                    f"Loss {self.name!r}: unknown {attribute} {sorted(values - allowed)} "
                    f"(known: {', '.join(sorted(allowed))})"
                )
            object.__setattr__(self, attribute, values)


@dataclass(frozen=True)
class MergeMethod:
    """A way to merge models.

    Either ``mergekit_method`` names one of mergekit's methods (the merge runs
    through mergekit), or ``fn(tensors, weights, **params) -> tensor`` merges
    one parameter given the same parameter from every model.
    """

    kind: ClassVar[str] = "merge_method"

    name: str
    fn: Optional[Callable[..., Any]] = None
    mergekit_method: Optional[str] = None
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if (self.fn is None) == (self.mergekit_method is None):
            raise ValueError(
                f"MergeMethod {self.name!r}: give exactly one of fn= or mergekit_method="
            )
        object.__setattr__(self, "params", _freeze(self.params))


@dataclass(frozen=True)
class _NamedFunction:
    """A plugin's function under a name, with its default parameters (read-only)."""

    name: str
    fn: Callable[..., Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "params", _freeze(self.params))


@dataclass(frozen=True)
class Judge(_NamedFunction):
    """A win-rate judge: ``fn(prompts, outputs_a, outputs_b, **params)``.

    Returns one answer per prompt: ``"a"``, ``"b"`` or ``"tie"``, or the
    probability in [0, 1] that ``a`` is better, or ``None`` for a comparison
    it could not judge (an unreadable reply: counted in ``# parsed`` and in
    no rate). An answer may also be a mapping ``{"judgment": ...,
    "prompt_tokens": N, "completion_tokens": M}`` so that ``dpo judge-eval``
    can price the judge. The eval harness handles order swapping, statistics
    and reports.

    ``params`` holds the defaults of every parameter the judge accepts;
    ``--judge-param`` keys outside it are refused. ``cache``: answers are
    kept on disk keyed by judge, parameters and texts (set it to False for a
    judge cheaper than a disk read, or one whose answers must not be reused).
    """

    kind: ClassVar[str] = "judge"

    cache: bool = True

@dataclass(frozen=True)
class PairBuilder(_NamedFunction):
    """A rule that turns the scores of one prompt's K samples into preference pairs.

    ``fn(scores, **params)`` gets the judge's scores of one prompt's samples
    (a list of floats, higher is better) and returns ``(pairs, dropped)``:
    ``pairs`` a list of ``(chosen_index, rejected_index)`` with the chosen
    sample scored strictly higher, and ``dropped`` the number of candidate
    pairs the rule left out as ties or near-ties. ``params`` holds the
    defaults of its parameters (``--pair-param k=v`` overrides them).
    """

    kind: ClassVar[str] = "pair_builder"


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check on a merged checkpoint.

    ``passed=False`` vetoes the checkpoint: ``dpo merge`` writes nothing and
    ``dpo anneal`` stops before training on it. ``message`` says what was
    found, in either case.
    """

    name: str
    passed: bool
    message: str = ""


@dataclass(frozen=True)
class StageInfo:
    """Which stage of which workflow is running, for lifecycle hooks.

    ``workflow`` is the command (``"merge"``, ``"anneal"``); ``stages`` lists
    every stage in order and ``index`` is this one's position; ``output_dir``
    is where the workflow writes; ``config`` is the workflow's parsed
    configuration (read-only).
    """

    workflow: str
    name: str
    index: int
    stages: Tuple[str, ...]
    output_dir: Any
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "config", _freeze(self.config))


class Checkpoint:
    """A checkpoint directory under inspection, with cached loaders.

    Checks share one tokenizer and one model, loaded on first use (on CPU,
    in the dtype the checkpoint was saved in) by the loaders the workflow
    hands over: ``dpo_plugins.adapters.models.open_checkpoint`` builds one
    with transformers' loaders, so this module stays free of it.
    """

    def __init__(self, path, dtype: Optional[str] = None, *, load_tokenizer: Callable[[Path], Any],
                 load_model: Callable[[Path], Any]):
        self.path = Path(path)
        self.dtype = dtype
        self._load_tokenizer = load_tokenizer
        self._load_model = load_model

    def config(self) -> dict:
        return self._config

    @cached_property
    def _config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    def tokenizer(self):
        return self._tokenizer

    @cached_property
    def _tokenizer(self):
        return self._load_tokenizer(self.path)

    def model(self):
        return self._model

    @cached_property
    def _model(self):
        return self._load_model(self.path)
