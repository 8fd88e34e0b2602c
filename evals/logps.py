"""Per-pair completion log-probs without gradient, for scoring held-out pairs.

Two forwards give the same numbers:

- ``packed`` (the default): :mod:`dpo_plugins.adapters.packing`, one
  prefix-shared ``[prompt | chosen | rejected]`` block per pair, packed
  without padding, the LM head only where a completion token is predicted.
- ``plain``: each pair as two rows, ``prompt + chosen`` and ``prompt +
  rejected``, right-padded and run in length-sorted batches, the
  log-softmax in float64. This is RewardBench's and TRL's computation, kept
  as the reference the packed one is tested against.

Both truncate exactly as TRL's ``DataCollatorForPreference`` does, and both
split their batches over the processes of ``accelerate launch``. A model the
packed forward cannot serve (:func:`~dpo_plugins.adapters.packing.
unsupported_reason`) is scored the plain way, with a log line saying why.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

from dpo_plugins.adapters.tokenization import check_truncation_mode, truncate
from dpo_plugins.specs import PairLogps
from dpo_plugins.errors import DpoPluginsError

from dpo_plugins.adapters.distributed import is_main_process, local_share, map_shared

logger = logging.getLogger("dpo_plugins.eval")
FORWARDS = ("packed", "plain")
TOKEN_REDUCTIONS = ("sum", "neg_l2_norm")
SUMS = ("chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths")  # what a single model's forward fills


def pair_logps(
    model,
    pairs: Sequence[Mapping[str, Sequence[int]]],
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "log-probs",
    forward: str = "packed",
    token_reduce: str = "sum",
) -> PairLogps:
    """Completion log-prob sums of every tokenized pair under ``model``.

    ``pairs`` are dicts with ``prompt_ids``, ``chosen_ids``, ``rejected_ids``
    (see :func:`dpo_plugins.adapters.tokenization.tokenize_pair`); results
    come back in input order. ``batch_size`` is pairs per batch (``packed``)
    or sequences per batch (``plain``); it changes memory, not results. The
    model runs in whatever dtype it was loaded in (float32 on CPU).
    ``token_reduce="neg_l2_norm"`` (plain forward only) gives ``-||log-probs||_2``
    over the completion tokens instead of their sum: RewardBench's ref-free ``norm``.
    """
    check_truncation_mode(truncation_mode)
    if forward not in FORWARDS:
        raise DpoPluginsError(f"forward {forward!r}: expected one of {', '.join(FORWARDS)}")
    if token_reduce not in TOKEN_REDUCTIONS:
        raise DpoPluginsError(f"token_reduce {token_reduce!r}: expected one of {', '.join(TOKEN_REDUCTIONS)}")
    if token_reduce != "sum":
        return _plain_logps(model, pairs, max_length, truncation_mode, batch_size, progress, desc, token_reduce)
    if forward == "packed":
        from dpo_plugins.adapters.packing import unsupported_reason

        reason = unsupported_reason(model)
        if reason is None:
            return _packed_logps(model, pairs, max_length, truncation_mode, batch_size, progress, desc)
        logger.info("%s: scoring the plain way", reason)
    return _plain_logps(model, pairs, max_length, truncation_mode, batch_size, progress, desc)


def _packed_logps(model, pairs, max_length, truncation_mode, batch_size, progress, desc) -> PairLogps:
    import torch

    from dpo_plugins.adapters.packing import packed_pair_logps

    def score(batch):  # on the CPU: under accelerate launch the results travel to the other processes
        out = packed_pair_logps(model, batch, max_length, truncation_mode, logps_dtype=torch.float64)
        return PairLogps.without_reference(*(getattr(out, name).cpu() for name in SUMS))

    batches = [pairs[start:start + batch_size] for start in range(0, len(pairs), batch_size)]
    results = _map_batches(batches, score, progress, desc)
    if not results:
        return PairLogps.without_reference(*(torch.zeros(0, dtype=d) for d in (torch.float64, torch.float64,
                                                                               torch.float32, torch.float32)))
    return PairLogps.without_reference(*(torch.cat([getattr(r, name) for r in results]) for name in SUMS))


def _plain_logps(model, pairs, max_length, truncation_mode, batch_size, progress, desc, token_reduce="sum") -> PairLogps:
    import torch

    rows = []
    for pair in pairs:
        for key in ("chosen_ids", "rejected_ids"):
            rows.append(truncate(pair["prompt_ids"], pair[key], max_length, truncation_mode))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]), reverse=True)
    sums = torch.zeros(len(rows), dtype=torch.float64)  # sums of ~1000 tokens lose 1e-4 in float32
    lengths = torch.zeros(len(rows), dtype=torch.float32)
    device = next(model.parameters()).device
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    results = _map_batches(batches, lambda batch: _row_logps(model, [rows[i] for i in batch], device, token_reduce).cpu(),
                           progress, desc)
    for batch, batch_sums in zip(batches, results):
        sums[batch] = batch_sums
        lengths[batch] = torch.tensor([float(sum(rows[i][1])) for i in batch])
    return PairLogps.without_reference(sums[0::2], sums[1::2], lengths[0::2], lengths[1::2])


def _map_batches(batches, work, progress, desc) -> list:
    """``[work(b) for b in batches]`` without gradient, split under accelerate launch, with a progress bar."""
    import torch
    from tqdm.auto import tqdm

    bar = tqdm(total=local_share(len(batches)), desc=desc, disable=not progress or not is_main_process(), unit="batch")

    def run_batch(batch):
        with torch.no_grad():
            result = work(batch)
        bar.update(1)
        return result

    results = map_shared(batches, run_batch)
    bar.close()
    return results


def _row_logps(model, rows, device, token_reduce="sum"):
    """Sum of log p(token) over completion tokens of right-padded rows.

    Token ``t`` is predicted from position ``t - 1``, so a completion token in
    the first position (possible after ``keep_end`` truncation) has no
    prediction and is not counted, as in TRL. The log-softmax and the sum run
    in float64: over hundreds of tokens float32 rounding alone reaches 1e-5
    (for a real model the forward costs far more than this).
    """
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    completion = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (ids, mask) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
        completion[i, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
    targets = input_ids[:, 1:].to(device)
    scored = completion[:, 1:].to(device)
    sums = []
    for row in range(len(rows)):  # float64, one row at a time to bound memory
        row_logits = logits[row, :-1].double()
        token_logps = row_logits.gather(-1, targets[row].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(row_logits, dim=-1)
        masked = token_logps * scored[row]
        sums.append(masked.sum() if token_reduce == "sum" else -torch.linalg.vector_norm(masked))
    return torch.stack(sums)
