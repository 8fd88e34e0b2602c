"""Tokenize a preference row exactly as reward-bench 0.1.4's DPO path does (``scripts/run_dpo.py``).

RewardBench's leaderboard numbers come from inputs built differently from
TRL's (:mod:`.tokenization`, which equals training and stays the default),
so ``dpo eval --tokenization rewardbench`` builds them RewardBench's way:

1. the prompt turns get roles by position (user, assistant, user, ...;
   the last must be the user's), whatever roles the data gave them, and a
   string prompt is one user turn (``rewardbench/utils.py``,
   ``prepare_dialogue_from_tokenizer``);
2. the chat template renders the prompt alone and prompt + answer, both
   *without* a generation prompt; the answer text is the full text with
   every occurrence of the prompt text removed, so the scored answer is
   e.g. ``<|im_start|>assistant\\n...<|im_end|>\\n`` for ChatML;
3. prompt and prompt + answer are tokenized with ``add_special_tokens=False``;
   the answer is what follows the prompt's tokens, starting one token
   earlier when the last prompt token merged with the answer's first
   (``DPOInference.build_tokenized_answer``);
4. the tokenizer's BOS id (its EOS id when it has none) is prepended to the
   prompt and its EOS id appended to each answer;
5. when prompt + the longer answer exceed ``max_length`` (2048) the prompt
   keeps its last ``max_prompt_length`` (128) tokens, and if that is still
   too long each answer keeps its first ``max_length - max_prompt_length``.

Every answer token is scored (the first is predicted from the prompt's last
token), so these ids go to the scorer with no further truncation.
``tests/test_rewardbench.py`` compares with ids reward-bench's own code
produced (``tests/data/rewardbench/``).
"""

from __future__ import annotations

from typing import Any, Mapping

from dpo_plugins.errors import DpoPluginsError

MAX_LENGTH = 2048
MAX_PROMPT_LENGTH = 128


def prompt_messages(prompt: Any) -> list[dict]:
    """RewardBench's prompt turns: a string is one user turn; a list's roles alternate from user."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise DpoPluginsError("rewardbench tokenization: the prompt must be a string or a non-empty list of turns")
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": turn.get("content")}
                for i, turn in enumerate(prompt)]
    if messages[-1]["role"] != "user":
        raise DpoPluginsError("rewardbench tokenization: the prompt has an even number of turns, so its last "
                              "is not the user's (RewardBench assigns roles by position)")
    return messages


def answer_text(answer: Any, side: str) -> str:
    """The answer as a string: RewardBench's answers are one assistant message's text."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0].get("content"), str):
        return answer[0]["content"]
    raise DpoPluginsError(f"rewardbench tokenization: {side} must be one plain-text answer")


def rewardbench_texts(row: Mapping[str, Any], tokenizer) -> tuple[str, str, str]:
    """``(prompt_text, chosen_answer_text, rejected_answer_text)`` as RewardBench renders them."""
    if not getattr(tokenizer, "chat_template", None):
        raise DpoPluginsError("rewardbench tokenization needs a tokenizer with a chat template "
                              "(reward-bench's FastChat templates are not reproduced)")
    messages = prompt_messages(row["prompt"])
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False)
    answers = []
    for side in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": answer_text(row[side], side)}], tokenize=False)
        answers.append(full.replace(prompt_text, ""))
    return prompt_text, answers[0], answers[1]


def _split(tokenizer, prompt_text: str, answer: str) -> tuple[list, list]:
    """``(prompt_ids, answer_ids)`` of prompt + answer, the boundary one token back if the two merged."""
    full = tokenizer(prompt_text + answer, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) > len(full):
        raise DpoPluginsError("rewardbench tokenization: the prompt tokenizes longer than prompt + answer")
    start = len(prompt_ids) if list(prompt_ids) == list(full[: len(prompt_ids)]) else len(prompt_ids) - 1
    return list(full[:start]), list(full[start:])


def tokenize_pair_rewardbench(row: Mapping[str, Any], tokenizer, max_length: int = MAX_LENGTH,
                              max_prompt_length: int = MAX_PROMPT_LENGTH) -> dict:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}`` exactly as reward-bench scores the row, truncation included."""
    prompt_text, chosen, rejected = rewardbench_texts(row, tokenizer)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    sides = [_split(tokenizer, prompt_text, answer) for answer in (chosen, rejected)]
    prompts = [[bos] + prompt for prompt, _ in sides]
    answers = [answer + [tokenizer.eos_token_id] for _, answer in sides]
    longer = max(len(answer) for answer in answers)
    prompts = [p[-max_prompt_length:] if len(p) + longer > max_length else p for p in prompts]
    answers = [a[: max_length - max_prompt_length] if len(p) + longer > max_length else a
               for p, a in zip(prompts, answers)]
    if prompts[0] != prompts[1]:
        raise DpoPluginsError("rewardbench tokenization: the chosen and rejected answers merge differently with "
                              "the prompt's last token, so their prompts differ; a shared-prompt pair cannot hold this")
    return {"prompt_ids": prompts[0], "chosen_ids": answers[0], "rejected_ids": answers[1]}
