"""Per-token log-probs of a batch's completions, in one layout for both forwards.

Token-level losses (``sft``, LD-DPO's shared-length split, WPO's weights, a
third party's) read the log-prob of every completion token, not just the sums.
TRL's two-row forward yields them aligned on sequence positions, the packed
forward (:mod:`.packing`) as a flat list of scored targets; :class:`TokenLogps`
holds either as ``(2B, T)`` tensors, rows ``[chosen_1..chosen_B,
rejected_1..rejected_B]`` as TRL's collator orders them, so everything
downstream is written once. Only the masked-in entries mean anything, and in
each row they are that completion's tokens in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch


@dataclass(frozen=True)
class TokenLogps:
    """``logps`` ``(2B, T)`` (with gradient for the policy), ``mask`` ``(2B, T)`` bool, and optionally WPO's
    ``log_sum_sq_probs`` ``(2B, T)`` (no gradient). Masked-out entries are 0."""

    logps: Any
    mask: Any
    log_sum_sq_probs: Any = None

    @classmethod
    def from_targets(cls, values, rows: Sequence[int], n_rows: int, log_sum_sq_probs=None) -> "TokenLogps":
        """From the packed forward: one value per scored target, ``rows[i]`` the row target ``i`` belongs to.

        Targets of one row arrive in completion order (the packed blocks list
        them so), so a running count per row is each target's column.
        """
        counts = [0] * n_rows
        columns = []
        for row in rows:
            columns.append(counts[row])
            counts[row] += 1
        width = max(counts, default=0)
        device = values.device
        index = (torch.tensor(list(rows), dtype=torch.long, device=device),
                 torch.tensor(columns, dtype=torch.long, device=device))
        mask = torch.zeros(n_rows, width, dtype=torch.bool, device=device).index_put(index, torch.ones_like(index[0], dtype=torch.bool))

        def scatter(flat):
            return flat.new_zeros(n_rows, width).index_put(index, flat)

        sq = None if log_sum_sq_probs is None else scatter(log_sum_sq_probs)
        return cls(scatter(values), mask, sq)

    @classmethod
    def from_sequences(cls, per_token_logps, shift_completion_mask, log_sum_sq_probs=None) -> "TokenLogps":
        """From TRL's forward: tensors aligned on (shifted) sequence positions with its completion mask."""
        mask = shift_completion_mask.bool()
        sq = None if log_sum_sq_probs is None else (log_sum_sq_probs * mask).detach()
        return cls(per_token_logps * mask, mask, sq)

    def sums(self):
        """Per-row sums, ``(2B,)``."""
        return self.logps.sum(dim=1)

    def halves(self, tensor) -> tuple[Any, Any]:
        """``(chosen rows, rejected rows)`` of one of the ``(2B, ...)`` tensors."""
        return tensor.chunk(2, dim=0)


def token_fields(tokens: Optional[TokenLogps], needs) -> dict[str, Any]:
    """The token-level :class:`~dpo_plugins.specs.LossBatch` fields the selected losses asked for."""
    fields = {}
    if tokens is None:
        return fields
    if "tokens" in needs:
        fields["chosen_token_logps"], fields["rejected_token_logps"] = tokens.halves(tokens.logps)
        fields["chosen_token_mask"], fields["rejected_token_mask"] = tokens.halves(tokens.mask)
    if "log_sum_sq_probs" in needs:
        chosen, rejected = tokens.halves(tokens.log_sum_sq_probs)
        fields["chosen_token_log_sum_sq_probs"], fields["rejected_token_log_sum_sq_probs"] = chosen, rejected
    return fields
