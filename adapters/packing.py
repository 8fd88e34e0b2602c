"""The prefix-shared, packed DPO forward: per-pair log-probs at a fraction of the cost.

Stock TRL feeds every pair as two padded rows, ``[prompt | chosen]`` and
``[prompt | rejected]``: the prompt is computed twice, padding is computed
too, and on CPU the LM head scores every position. Here each pair is one
block ``[prompt | chosen | rejected]``: the rejected tokens take the position
ids that follow the prompt and, under the attention mask, never see the
chosen tokens, so every hidden state is exactly the one the two-row forward
computes. Blocks are packed into rows up to a token budget with a
block-diagonal mask and no padding (each row is its own forward), and the LM
head only runs on the hidden states that predict a completion token, in
chunks, so the ``(tokens, vocab)`` float32 logits are never held for the
whole batch (:class:`_TargetLogProbs` recomputes a chunk in backward).

Truncation is TRL's ``DataCollatorForPreference``: ``[prompt + chosen]`` and
``[prompt + rejected]`` are each cut to ``max_length`` (``keep_start`` or
``keep_end``). When a cut removes the start of a sequence the two prompts
differ, and the pair becomes two independent blocks.

``packed_pair_logps`` has the contract's signature and result
(a :class:`dpo_plugins.specs.PairLogps`, as the plain two-row
``dpo_plugins.evals.logps.pair_logps``); it works under
autograd (policy) and under ``torch.no_grad()`` (reference, eval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.adapters.tokenization import truncate
from dpo_plugins.specs import PairLogps

MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take our 4D mask as given
DEFAULT_TOKEN_BUDGET = 512
DEFAULT_LOGIT_CHUNK = 1024

# What a token of a block is, for the attention mask: rejected tokens never see chosen ones.
SHARED, CHOSEN, REJECTED = 0, 1, 2
CHOSEN_SIDE, REJECTED_SIDE = 0, 1


@dataclass(frozen=True)
class TokenSums:
    """No-grad sums behind TRL's token metrics, per pair and side: each shape ``(B,)``.

    ``entropy``: next-token entropy; ``mean_logits``: the logits' mean over the
    vocabulary; ``top1``: completion tokens that are the argmax — all summed
    over the scored completion tokens.
    """

    chosen_entropy: Any
    rejected_entropy: Any
    chosen_mean_logits: Any
    rejected_mean_logits: Any
    chosen_top1: Any
    rejected_top1: Any


@dataclass(frozen=True)
class Block:
    """One pair's tokens in packed form (or half a pair's, when its prompts cannot be shared).

    ``targets`` lists ``(index of the predicting token in the block, target token id, side)``.
    The last token of each branch predicts nothing and is left out of ``tokens``.
    """

    pair: int
    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    kinds: tuple[int, ...]
    targets: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int:
        return len(self.tokens)


def sequence_blocks(index: int, chosen_ids, chosen_mask, rejected_ids, rejected_mask) -> list[Block]:
    """The blocks of one pair given its two (already truncated) sequences and completion masks.

    The pair shares one block when both sequences start with the same
    non-empty prompt (always, unless a ``keep_end`` cut removed different
    amounts of it); otherwise each sequence is its own block.
    """
    prompt_len = _prompt_length(chosen_mask)
    if prompt_len and prompt_len == _prompt_length(rejected_mask) and chosen_ids[:prompt_len] == rejected_ids[:prompt_len]:
        blocks = [_shared_block(index, list(chosen_ids), list(rejected_ids[prompt_len:]), prompt_len)]
    else:
        blocks = [
            _sequence_block(index, list(chosen_ids), list(chosen_mask), CHOSEN_SIDE),
            _sequence_block(index, list(rejected_ids), list(rejected_mask), REJECTED_SIDE),
        ]
    # A block that predicts nothing (its completions were truncated away) needs no forward.
    return [b for b in blocks if b.targets]


def _prompt_length(mask) -> int:
    """Leading prompt tokens; a sequence with a completion token among them is not prompt-then-completion."""
    prompt_len = next((i for i, m in enumerate(mask) if m), len(mask))
    return prompt_len if all(mask[prompt_len:]) else 0


def _sequence_block(index: int, ids: list[int], mask: list[int], side: int) -> Block:
    """A plain causal block: token ``i`` (a completion token, ``i >= 1``) is predicted by token ``i - 1``."""
    inputs = ids[:-1]
    targets = tuple((i - 1, ids[i], side) for i in range(1, len(ids)) if mask[i])
    return Block(index, tuple(inputs), tuple(range(len(inputs))), (SHARED,) * len(inputs), targets)


def _shared_block(index: int, chosen_seq: list[int], rejected: list[int], prompt_len: int) -> Block:
    """``[prompt | chosen[:-1] | rejected[:-1]]``; the rejected positions continue from the prompt end."""
    chosen = chosen_seq[prompt_len:]
    chosen_inputs = chosen[:-1]
    rejected_inputs = rejected[:-1]
    rejected_start = prompt_len + len(chosen_inputs)
    targets = [(prompt_len - 1 + j, token, CHOSEN_SIDE) for j, token in enumerate(chosen)]
    targets += [(prompt_len - 1 if j == 0 else rejected_start + j - 1, token, REJECTED_SIDE) for j, token in enumerate(rejected)]
    return Block(
        index,
        tuple(chosen_seq[:prompt_len] + chosen_inputs + rejected_inputs),
        tuple(range(prompt_len + len(chosen_inputs))) + tuple(range(prompt_len, prompt_len + len(rejected_inputs))),
        (SHARED,) * prompt_len + (CHOSEN,) * len(chosen_inputs) + (REJECTED,) * len(rejected_inputs),
        tuple(targets),
    )


def pack(blocks: Sequence[Block], token_budget: int) -> list[list[Block]]:
    """First-fit decreasing into rows of at most ``token_budget`` tokens; a longer block gets a row alone.

    Deterministic: ties keep the input order.
    """
    rows: list[list[Block]] = []
    room: list[int] = []
    for block in sorted(blocks, key=len, reverse=True):
        for r, free in enumerate(room):
            if len(block) <= free:
                rows[r].append(block)
                room[r] -= len(block)
                break
        else:
            rows.append([block])
            room.append(token_budget - len(block))
    return rows


def row_inputs(row: Sequence[Block], model) -> tuple[Any, Any, Any]:
    """``input_ids``, ``position_ids`` (both ``(1, T)``) and the ``(1, 1, T, T)`` mask for one packed row."""
    tokens = torch.tensor([t for b in row for t in b.tokens], dtype=torch.long)
    positions = torch.tensor([p for b in row for p in b.positions], dtype=torch.long)
    kinds = torch.tensor([k for b in row for k in b.kinds], dtype=torch.long)
    block_ids = torch.repeat_interleave(torch.arange(len(row)), torch.tensor([len(b) for b in row]))
    n = tokens.numel()
    allowed = torch.ones(n, n, dtype=torch.bool).tril_()
    allowed &= block_ids[:, None] == block_ids[None, :]
    allowed &= ~((kinds[:, None] == REJECTED) & (kinds[None, :] == CHOSEN))
    return tokens[None], positions[None], _attention_mask(allowed[None, None], model)


def _attention_mask(allowed, model):
    """The 4D mask in the form the model's attention implementation reads (it is passed through as-is).

    SDPA takes the boolean mask; eager adds a float one. Other implementations
    are refused before any row is built (:func:`unsupported_reason`).
    """
    if model.config._attn_implementation == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return allowed


def packed_pair_logps(
    model,
    pairs: Sequence[dict],
    max_length=None,
    truncation_mode: str = "keep_start",
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    logit_chunk: int = DEFAULT_LOGIT_CHUNK,
    logps_dtype=None,
    per_token: bool = False,
):
    """Per-pair completion log-prob sums of ``model`` on tokenized ``pairs`` (the packed, prefix-shared way).

    ``pairs`` are dicts with ``prompt_ids``, ``chosen_ids``, ``rejected_ids``
    (as TRL's ``DPOTrainer`` tokenizes them). Gradients flow when called
    under autograd. Equal to the plain two-row computation (within float32
    rounding); see tests/test_packing.py. ``logps_dtype`` (without gradient
    only): the dtype of the log-softmax and the sums, e.g. ``torch.float64``
    as the plain eval path uses (default: the model's). ``per_token``: also
    return the per-token log-probs, ``(PairLogps, TokenLogps)``.
    """
    blocks, lengths = [], []
    for index, pair in enumerate(pairs):
        chosen_ids, chosen_mask = truncate(pair["prompt_ids"], pair["chosen_ids"], max_length, truncation_mode)
        rejected_ids, rejected_mask = truncate(pair["prompt_ids"], pair["rejected_ids"], max_length, truncation_mode)
        blocks += sequence_blocks(index, chosen_ids, chosen_mask, rejected_ids, rejected_mask)
        lengths.append((sum(chosen_mask), sum(rejected_mask)))
    out = blocks_logps(model, blocks, lengths, token_budget, logit_chunk, logps_dtype=logps_dtype, per_token=per_token)
    return (out[0], out[2]) if per_token else out


def collated_pair_logps(model, batch, token_budget: int = DEFAULT_TOKEN_BUDGET, logit_chunk: int = DEFAULT_LOGIT_CHUNK, token_sums: bool = False,
                        per_token: bool = False, log_sum_sq: bool = False):
    """:func:`packed_pair_logps` on a batch from TRL's ``DataCollatorForPreference`` (already truncated).

    ``batch`` has right-padded ``input_ids`` rows ``[chosen_1..chosen_B,
    rejected_1..rejected_B]``, ``attention_mask`` and ``completion_mask``;
    the padding is dropped here. With ``token_sums`` it returns
    ``(PairLogps, TokenSums)``; ``per_token`` / ``log_sum_sq``: see :func:`blocks_logps`.
    """
    ids = batch["input_ids"].tolist()
    real = batch["attention_mask"].sum(dim=1).tolist()
    completion = batch["completion_mask"].tolist()
    n_pairs = len(ids) // 2
    rows = [(ids[r][: real[r]], completion[r][: real[r]]) for r in range(len(ids))]
    blocks = [b for i in range(n_pairs) for b in sequence_blocks(i, *rows[i], *rows[n_pairs + i])]
    lengths = [(sum(rows[i][1]), sum(rows[n_pairs + i][1])) for i in range(n_pairs)]
    return blocks_logps(model, blocks, lengths, token_budget, logit_chunk, token_sums, per_token=per_token,
                        log_sum_sq=log_sum_sq)


def blocks_logps(model, blocks, lengths, token_budget=DEFAULT_TOKEN_BUDGET, logit_chunk=DEFAULT_LOGIT_CHUNK, token_sums=False,
                 logps_dtype=None, per_token=False, log_sum_sq=False):
    """Run the packed rows through ``model`` and sum the target log-probs per pair and side.

    With ``token_sums``: ``(PairLogps, TokenSums)``. With ``per_token``:
    ``(PairLogps, TokenSums or None, TokenLogps)``, the log-prob of every
    target (and with ``log_sum_sq`` WPO's ``log sum_v p^2``, computed chunk
    by chunk in the LM head like the other token statistics).
    """
    reason = unsupported_reason(model)
    if reason:  # rather than compute different numbers
        raise DpoPluginsError(f"{reason}: use the stock forward for this model")
    n_pairs = len(lengths)
    decoder = model.get_decoder()
    device = model.get_output_embeddings().weight.device
    hidden, target_ids, owners = [], [], []
    for row in pack(blocks, token_budget):
        input_ids, position_ids, mask = (t.to(device) for t in row_inputs(row, model))
        states = decoder(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False)
        offsets, start = [], 0
        for block in row:
            offsets.append(start)
            start += len(block)
        index = torch.tensor([o + i for o, b in zip(offsets, row) for i, _, _ in b.targets], dtype=torch.long)
        hidden.append(states.last_hidden_state[0].index_select(0, index.to(device)))
        target_ids += [t for b in row for _, t, _ in b.targets]
        owners += [2 * b.pair + side for b in row for _, _, side in b.targets]
    head = model.get_output_embeddings()
    sums = head.weight.new_zeros(2 * n_pairs, dtype=logps_dtype or _log_softmax_dtype(head.weight.dtype))
    owner_index = torch.tensor(owners, dtype=torch.long, device=device)
    stats = [] if token_sums else None
    sq_stats = [] if log_sum_sq else None  # WPO's statistic, chunk by chunk
    logps = sums[:0]
    if hidden:
        targets = torch.tensor(target_ids, device=device)
        logps = target_logprobs(torch.cat(hidden), head.weight, head.bias, targets, logit_chunk, stats, logps_dtype,
                                sq_stats)
        sums = sums.index_add(0, owner_index, logps)
    elif torch.is_grad_enabled() and head.weight.requires_grad:
        # Nothing to score (every completion truncated away): still a differentiable zero, as TRL returns.
        sums = sums + head.weight[:0].sum()
    lengths = torch.tensor(lengths, dtype=torch.float32, device=device)
    result = PairLogps.without_reference(sums[0::2], sums[1::2], lengths[:, 0], lengths[:, 1])
    tokens = None
    if per_token:  # rows [chosen_1..B, rejected_1..B] as TRL's collator orders them
        from .token_logps import TokenLogps

        rows = [(owner % 2) * n_pairs + owner // 2 for owner in owners]
        sq = torch.cat(sq_stats) if sq_stats else (logps.detach() if log_sum_sq else None)
        tokens = TokenLogps.from_targets(logps, rows, 2 * n_pairs, sq)
    if not token_sums:
        return (result, None, tokens) if per_token else result
    per_side = [
        sums.new_zeros(2 * n_pairs).index_add(0, owner_index, torch.cat(column).to(sums.dtype))
        if column
        else sums.new_zeros(2 * n_pairs)
        for column in zip(*stats)
    ] or [sums.new_zeros(2 * n_pairs)] * 3
    entropy, mean_logits, top1 = (t.detach() for t in per_side)
    token_sums = TokenSums(entropy[0::2], entropy[1::2], mean_logits[0::2], mean_logits[1::2], top1[0::2], top1[1::2])
    return (result, token_sums, tokens) if per_token else (result, token_sums)


def unsupported_reason(model) -> Optional[str]:
    """Why the packed forward cannot serve ``model`` (``None`` when it can): callers then use the stock forward.

    It needs an attention implementation that takes its 4D mask, and logits
    that are exactly ``lm_head(hidden)``.
    """
    implementation = model.config._attn_implementation
    if implementation not in MASKED_ATTENTION:
        return f"the packed forward needs attn_implementation 'sdpa' or 'eager', not {implementation!r}"
    config = model.config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return (f"the packed forward computes logits as lm_head(hidden) and cannot apply {name}={value!r} "
                    f"of {type(model).__name__}")
    return None


def target_logprobs(hidden, weight, bias, targets, chunk: int = DEFAULT_LOGIT_CHUNK, stats=None, dtype=None, sq_stats=None):
    """``log_softmax(hidden @ weight.T + bias)[i, targets[i]]`` without holding all the logits.

    When ``stats`` is a list, ``(entropy, mean_logits, is_top1)`` of each chunk is appended to it.
    ``dtype`` (without gradient only): the log-softmax's dtype (default: the logits').
    When ``sq_stats`` is a list, each chunk's ``log sum_v p(v)^2`` (WPO) is appended to it.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        if dtype is not None:
            raise DpoPluginsError("a log-softmax dtype is for scoring without gradient")
        return _TargetLogProbs.apply(hidden, weight, bias, targets, chunk, stats, sq_stats)
    return _forward_chunks(hidden, weight, bias, targets, chunk, stats, dtype, sq_stats)


def _forward_chunks(hidden, weight, bias, targets, chunk, stats, dtype=None, sq_stats=None):
    out = []
    for h, t in _chunks(hidden, targets, chunk):
        logps, logits, lse = _chunk_logprobs(h, weight, bias, t, dtype)
        out.append(logps)
        if stats is not None:
            with torch.no_grad():
                probs = (logits - lse[:, None]).exp_()
                entropy = lse - (probs * logits).sum(-1)
                stats.append((entropy, logits.mean(-1), (logits.argmax(-1) == t).float()))
        if sq_stats is not None:
            with torch.no_grad():  # log sum_v p^2 = logsumexp(2 * logits) - 2 * logsumexp(logits)
                sq_stats.append((2 * logits).logsumexp(-1) - 2 * lse)
    return torch.cat(out) if out else hidden.new_zeros(0)


def _chunks(hidden, targets, chunk):
    return [(hidden[s : s + chunk], targets[s : s + chunk]) for s in range(0, hidden.shape[0], chunk)]


def _log_softmax_dtype(dtype):
    """At least float32: bfloat16 keeps 8 significant bits, too few for log-probs summed over hundreds of tokens."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_logprobs(hidden, weight, bias, targets, dtype=None):
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(dtype or _log_softmax_dtype(logits.dtype))
    lse = logits.logsumexp(dim=-1)
    return logits.gather(1, targets[:, None])[:, 0] - lse, logits, lse


class _TargetLogProbs(torch.autograd.Function):
    """Chunked target log-probs whose backward recomputes each chunk's logits instead of storing them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, stats, sq_stats=None):
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk = chunk
        return _forward_chunks(hidden, weight, bias, targets, chunk, stats, sq_stats=sq_stats)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            stop = start + ctx.chunk
            h, t, g = hidden[start:stop], targets[start:stop], grad[start:stop]
            _, logits, lse = _chunk_logprobs(h, weight, bias, t)
            # d/dlogits of g * (logit[t] - logsumexp) = g * (onehot(t) - softmax)
            grad_logits = logits.sub_(lse[:, None]).exp_().mul_(-g[:, None])
            grad_logits[torch.arange(t.shape[0]), t] += g
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start:stop] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, h)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None
