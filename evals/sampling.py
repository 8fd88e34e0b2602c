"""K sampled completions per prompt from a policy, many prompts per ``generate`` call.

:func:`~.judging.generate` runs one unpadded prompt at a time so that its
greedy outputs never depend on batching. Online DPO needs many samples, so
here a batch of prompts is left-padded into one ``generate`` call that
returns ``k`` sequences per prompt (``num_return_sequences``), decoding with
the KV cache. The random stream is seeded once per batch, so a fixed seed and
batch size give the same samples every time; another batch size gives other
(equally valid) samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .judging import GenerationSettings, prompt_ids, sampling_kwargs


@dataclass(frozen=True)
class Sample:
    """One completion: its text (special tokens removed, stripped) and the tokens generated, EOS included."""

    text: str
    tokens: int


def sample_batch(model, tokenizer, prompts: Sequence[Any], k: int, settings: GenerationSettings,
                 seed: int) -> list[list[Sample]]:
    """``k`` samples for each of ``prompts`` from one left-padded ``generate`` call seeded with ``seed``."""
    import torch

    encoded = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids):] = 1
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    with torch.no_grad():
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                   max_new_tokens=settings.max_new_tokens, num_return_sequences=k,
                                   pad_token_id=pad, use_cache=True, **sampling_kwargs(settings))
    completions = generated[:, width:].tolist()
    stops = _stop_ids(model, tokenizer)
    samples = []
    for tokens in completions:
        end = next((i + 1 for i, token in enumerate(tokens) if token in stops), len(tokens))
        samples.append(Sample(tokenizer.decode(tokens[:end], skip_special_tokens=True).strip(), end))
    return [samples[start:start + k] for start in range(0, len(samples), k)]


def _stop_ids(model, tokenizer) -> set:
    """The tokens that end a sequence: the tokenizer's EOS and the model's generation config's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    return stops
