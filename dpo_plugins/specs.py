"""The small frozen records that registration hooks return.

Each record names one thing a plugin provides (a format, a loss, a merge
method, a judge). The host only reads them; plugins build them. ``kind`` is
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
from typing import Any, Callable, ClassVar, Mapping, Optional, Tuple


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


@dataclass(frozen=True)
class LossBatch:
    """What a loss function sees: per-pair sums over completion tokens.

    All tensors have shape ``(B,)``. ``ref_*`` are ``None`` when the run has
    no reference model (a loss with ``needs_reference=False``).
    """

    chosen_logps: Any
    rejected_logps: Any
    ref_chosen_logps: Any
    ref_rejected_logps: Any
    chosen_lengths: Any
    rejected_lengths: Any


@dataclass(frozen=True)
class Loss:
    """A DPO loss variant: ``fn(batch: LossBatch, beta, **params) -> (B,)``.

    ``params`` holds the defaults of the loss's own parameters; users
    override them with ``--loss-param k=v``. A loss that never reads the
    reference log-probs sets ``needs_reference=False`` and training then
    loads no reference model.
    """

    kind: ClassVar[str] = "loss"

    name: str
    fn: Callable[..., Any]
    needs_reference: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "params", _freeze(self.params))


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
class Judge:
    """A win-rate judge: ``fn(prompts, outputs_a, outputs_b, **params)``.

    Returns one verdict per prompt: ``"a"``, ``"b"`` or ``"tie"``, or the
    probability in [0, 1] that ``a`` is better. The eval harness handles
    order swapping, statistics and reports.
    """

    kind: ClassVar[str] = "judge"

    name: str
    fn: Callable[..., Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "params", _freeze(self.params))


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

    Checks share one tokenizer and one model (loaded on first use, on CPU,
    in the dtype the checkpoint was saved in).
    """

    def __init__(self, path, dtype: Optional[str] = None):
        self.path = Path(path)
        self.dtype = dtype

    def config(self) -> dict:
        return self._config

    @cached_property
    def _config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    def tokenizer(self):
        return self._tokenizer

    @cached_property
    def _tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)

    def model(self):
        return self._model

    @cached_property
    def _model(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.path, dtype="auto").eval()
