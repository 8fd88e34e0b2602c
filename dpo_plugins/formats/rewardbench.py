"""RewardBench's dataset layouts (reward-bench 0.1.4).

- ``allenai/reward-bench`` (the core set): ``prompt`` (a string),
  ``chosen`` and ``rejected`` (strings), ``subset``, ``id``,
  ``chosen_model``, ``rejected_model``;
- ``allenai/pref-test-sets``: ``prompt`` as a list of ``{role, content}``
  turns, ``chosen`` and ``rejected`` strings (the subset is the split's
  name there; give it as a ``subset`` column in a local file).

``subset`` and every other field are kept as metadata, and
:func:`subsets_of` reads them back, so ``dpo eval`` reports accuracy per
subset as RewardBench does. RewardBench scores a prompt's turns by position
(user, assistant, user, ...): see :mod:`dpo_plugins.adapters.rewardbench_tokenization`.
"""

from __future__ import annotations

from ..records import PreferenceRecord, Problem, RecordError
from .shapes import answer_text, plain_turns, require, text_record


def to_record(row: dict) -> PreferenceRecord:
    require(row, ("chosen", "rejected"), str, "RewardBench")
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        turns = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt:
        bad = [i for i, turn in enumerate(prompt) if not isinstance(turn, dict) or not isinstance(turn.get("content"), str)
               or turn.get("role") not in ("user", "assistant")]
        if bad:
            raise RecordError([Problem(f"prompt[{i}]", "expected a {role: user|assistant, content: string} turn", "schema")
                               for i in bad])
        turns = [{"role": turn["role"], "content": turn["content"]} for turn in prompt]
    else:
        raise RecordError([Problem("prompt", "missing, or not a string or a non-empty list of turns", "schema")])
    metadata = {key: value for key, value in row.items() if key not in ("prompt", "chosen", "rejected")}
    record = text_record(turns, row["chosen"], row["rejected"], metadata)
    record.text = isinstance(prompt, str)
    return record


def from_record(record: PreferenceRecord) -> dict:
    _, turns = plain_turns(record, "RewardBench", system=False)
    chosen, rejected = answer_text(record, "RewardBench")
    if record.text and len(turns) == 1 and turns[0][0] == "user":
        prompt = turns[0][1]
    else:
        prompt = [{"role": role, "content": text} for role, text in turns]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **record.metadata}


def detect(row: dict) -> bool:
    if not (isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str)):
        return False
    prompt = row.get("prompt")
    return (isinstance(prompt, str) and "chosen_model" in row) or (isinstance(prompt, list) and bool(prompt))


NO_SUBSET = "(no subset)"


def subsets_of(path) -> list | None:
    """Each row's ``subset``, in file order; ``None`` when no row has a string one.

    A row without one (when others have one) is counted under
    :data:`NO_SUBSET` and the count logged, so the per-subset table neither
    vanishes nor silently leaves rows out.
    """
    import logging

    from .files import read_rows

    subsets = [row.get("subset") if isinstance(row, dict) else None for _, row in read_rows(path)]
    missing = sum(not isinstance(subset, str) for subset in subsets)
    if missing == len(subsets):
        return None
    if missing:
        logging.getLogger("dpo_plugins.eval").warning(
            "%s: %d of %d rows have no subset; they are reported as %r", path, missing, len(subsets), NO_SUBSET)
    return [subset if isinstance(subset, str) else NO_SUBSET for subset in subsets]
