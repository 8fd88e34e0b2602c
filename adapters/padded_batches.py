"""Under several processes, the last batch of an epoch weighs only its real pairs, as one process would.

When the pairs do not fill a whole number of global batches (``per-device
batch × processes``), accelerate's ``BatchSamplerShard`` (``even_batches``,
the default) completes the last one with the epoch's first pairs so that
every process gets a full batch: that step trains on pairs that step 1 of
the epoch already saw, where one process trains on the short batch alone.
Stock TRL does exactly that (docs/distributed.md). TRL also drops pairs
whose prompt fills ``max_length`` before batching, so "8 pairs at 4 a step"
can be 5, and the last step then repeats 3 of them.

accelerate keeps the count of real pairs of that last global batch
(``GradientState.remainder``) and puts them first, in process order (the
same rule ``gather_for_metrics`` uses to drop the repeats). Each pair here
gets the weight ``processes × local batch / real pairs`` (0 for a repeat),
so that DDP's average of the processes' ``mean(weight × loss)`` is the mean
over the real pairs: the single process's loss and gradient.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

WEIGHTS_KEY = "padding_weights"


def repeated_pairs_weights(accelerator, local_pairs: int) -> Optional[torch.Tensor]:
    """The per-pair weights of the batch just drawn, or ``None`` when it holds no repeated pair."""
    if accelerator.num_processes == 1:
        return None
    state = accelerator.gradient_state
    remainder = state.remainder
    if not state.end_of_dataloader or remainder is None or remainder <= 0:
        return None
    loader = state.active_dataloader
    sampler = getattr(loader, "batch_sampler", None)
    if not getattr(sampler, "even_batches", False) or getattr(sampler, "drop_last", False):
        return None  # no repeats were added (or another loader kind, which we do not weigh: see the docs)
    rank = accelerator.process_index
    real = min(max(remainder - rank * local_pairs, 0), local_pairs)
    weights = torch.zeros(local_pairs, dtype=torch.float32)
    weights[:real] = accelerator.num_processes * local_pairs / remainder
    return weights


class WeighRepeatedPairs:
    """An epoch iterator whose last batch carries :data:`WEIGHTS_KEY` when accelerate padded it.

    The weights are read as each batch is drawn: the Trainer draws a whole
    gradient-accumulation step ahead, after which the loader's state
    describes only the last of those batches.
    """

    def __init__(self, batches: Iterator, accelerator):
        self.batches, self.accelerator = batches, accelerator

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.batches)
        weights = repeated_pairs_weights(self.accelerator, batch["input_ids"].shape[0] // 2)
        if weights is not None:
            batch[WEIGHTS_KEY] = weights.to(batch["input_ids"].device)
        return batch
