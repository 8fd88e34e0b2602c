"""The packed forward under DDP: run as the wrapper's own forward, so gradients are averaged as DDP's.

``DistributedDataParallel`` averages gradients through hooks that its
``forward`` arms for the coming backward (and, with
``find_unused_parameters``, through the graph of what that forward returned).
The packed forward does not call the model's ``forward`` (it runs the
decoder on packed rows and the LM head only where a completion token is
predicted), so it is installed, for one call, as the wrapped module's
``forward``, and the wrapper is called: DDP then does for it exactly what it
does for TRL's two-row forward.
"""

from __future__ import annotations

from typing import Any, Callable

from torch.nn.parallel import DistributedDataParallel


def is_ddp(model) -> bool:
    return isinstance(model, DistributedDataParallel)


def through_wrapper(model, compute: Callable[[Any], Any]):
    """``compute(bare_model)``, called through ``model``'s forward when ``model`` is a DDP wrapper."""
    if not is_ddp(model):
        return compute(model)
    bare = model.module
    bare.forward = lambda: compute(bare)  # an instance attribute: nn.Module.__call__ looks it up first
    try:
        return model()
    finally:
        del bare.forward
