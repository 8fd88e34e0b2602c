"""Tokenize a TRL preference row exactly as TRL 1.16 ``DPOTrainer`` does.

Offline numbers (reward accuracy, cached reference log-probs, packed
forwards) only agree with training's logs if every token is the same, so
this module reproduces ``DPOTrainer._prepare_dataset`` for one row, using
TRL's own helpers: implicit prompts are extracted, standard (string) rows get
EOS appended to chosen/rejected, conversational rows go through the chat
template (generation prompt for the prompt alone, ``tools`` passed through),
and the completion starts where the tokenized prompt and prompt+completion
diverge. ``tests/test_tokenization.py`` compares against a real
``DPOTrainer(...).train_dataset``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from dpo_plugins.errors import DpoPluginsError

TRUNCATION_MODES = ("keep_start", "keep_end")


def explicit_prompt(row: Mapping[str, Any]) -> dict:
    """The row with an explicit ``prompt``: TRL's shared-prefix extraction when it has none."""
    from trl.data_utils import extract_prompt

    example = dict(row)
    return example if "prompt" in example else {**example, **extract_prompt(example)}


def tokenize_pair(row: Mapping[str, Any], tokenizer) -> dict:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}`` for one TRL preference row."""
    return tokenize_pair_and_boundary(row, tokenizer)[0]


def tokenize_pair_and_boundary(row: Mapping[str, Any], tokenizer) -> tuple[dict, bool]:
    """:func:`tokenize_pair`, and whether the tokenized prompt had to be cut back to where
    prompt+completion diverge (a template or whitespace boundary problem ``dpo validate`` reports)."""
    from trl.data_utils import _tokenize, common_prefix_length, is_conversational

    example = explicit_prompt(row)
    if is_conversational(example):
        tools = example.get("tools")
        kwargs = {"tools": json.loads(tools) if isinstance(tools, str) else tools}
        kwargs.update(example.get("chat_template_kwargs") or {})
        prompt_ids = _tokenize(tokenizer, example["prompt"], add_generation_prompt=True, **kwargs)["input_ids"]
        full_ids = [_tokenize(tokenizer, example["prompt"] + example[key], **kwargs)["input_ids"] for key in ("chosen", "rejected")]
    else:
        eos = tokenizer.eos_token
        prompt_ids = _tokenize(tokenizer, example["prompt"])["input_ids"]
        full_ids = [
            _tokenize(tokenizer, example["prompt"] + _with_suffix(example[key], eos))["input_ids"]
            for key in ("chosen", "rejected")
        ]
    # Some templates render the prompt alone differently; TRL starts the completion where they diverge.
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    pair = {
        "prompt_ids": list(prompt_ids[:prompt_len]),
        "chosen_ids": list(full_ids[0][prompt_len:]),
        "rejected_ids": list(full_ids[1][prompt_len:]),
    }
    return pair, prompt_len < len(prompt_ids)


def _with_suffix(text: str, suffix: str) -> str:
    return text if text.endswith(suffix) else text + suffix


def prompt_dropped(pair: Mapping[str, Any], max_length: int | None, truncation_mode: str = "keep_start") -> bool:
    """Whether TRL drops this tokenized pair: its prompt alone fills ``max_length``.

    TRL applies the rule only with ``keep_start`` truncation, where the
    collator would otherwise cut away every completion token.
    """
    check_truncation_mode(truncation_mode)
    return max_length is not None and truncation_mode == "keep_start" and len(pair["prompt_ids"]) >= max_length


def check_truncation_mode(truncation_mode: str) -> None:
    if truncation_mode not in TRUNCATION_MODES:
        raise DpoPluginsError(
            f"truncation_mode {truncation_mode!r}: expected one of {', '.join(TRUNCATION_MODES)}"
        )


def truncate(prompt_ids: Sequence[int], completion_ids: Sequence[int], max_length=None, truncation_mode="keep_start"):
    """``(ids, completion_mask)`` of one ``[prompt + completion]`` sequence, cut as TRL's collator cuts it."""
    check_truncation_mode(truncation_mode)
    ids = list(prompt_ids) + list(completion_ids)
    mask = [0] * len(prompt_ids) + [1] * len(completion_ids)
    if max_length is None or len(ids) <= max_length:
        return ids, mask
    if truncation_mode == "keep_start":
        return ids[:max_length], mask[:max_length]
    return ids[-max_length:], mask[-max_length:]
