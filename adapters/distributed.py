"""The processes of ``accelerate launch``: how many, which one, and work split across them with identical results.

On CPU-only machines launch with ``accelerate launch --multi_gpu
--num_processes N -m dpo_plugins eval ...`` (``--multi_gpu`` selects
accelerate's torchrun launcher; the processes then join with gloo on CPU;
``--cpu`` would start a single process).

Work is split in the same units a single process uses (length-sorted
batches for log-probs, single prompts for generation), so every number is
computed from exactly the same inputs in exactly the same way as in one
process; the pieces are then gathered in order on every process. Without
``accelerate launch`` (or with one process) everything runs locally.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence


def _state():
    """accelerate's process state; on a machine without GPUs, CPU processes joined with gloo."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    """How many processes ``accelerate launch`` (or torchrun) started; 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_info() -> tuple[int, int]:
    """``(process_index, num_processes)``; ``(0, 1)`` when not launched distributed."""
    if world_size() <= 1:
        return 0, 1
    state = _state()
    return state.process_index, state.num_processes


def is_main_process() -> bool:
    return process_info()[0] == 0


def local_share(count: int) -> int:
    """How many of ``count`` units :func:`map_shared` gives this process (for progress bars)."""
    rank, world = process_info()
    return len(range(rank, count, world))


def every_process(flag: bool) -> bool:
    """Whether ``flag`` holds on every process, so that all of them take the same branch."""
    if process_info()[1] == 1:
        return flag
    from accelerate.utils import gather_object

    return all(gather_object([flag]))


def wait_for_everyone() -> None:
    if process_info()[1] > 1:
        _state().wait_for_everyone()


def map_shared(units: Sequence[Any], work: Callable[[Any], Any]) -> list:
    """``[work(u) for u in units]``, the units dealt round-robin to the processes, results on every process."""
    rank, world = process_info()
    local = [(index, work(units[index])) for index in range(rank, len(units), world)]
    if world == 1:
        return [result for _, result in local]
    from accelerate.utils import gather_object

    results = [None] * len(units)
    for index, result in gather_object(local):
        results[index] = result
    return results



def engine_problems(config: dict, extra: list[str], gpu: bool) -> list[str]:
    """Why the FSDP / DeepSpeed asked for (config keys, ``--fsdp`` / ``--deepspeed`` flags, or the
    ``accelerate launch`` environment) cannot run here, one line each; checked before ``DPOConfig`` is built.

    accelerate enables FSDP only for a GPU (or other accelerator) launch, and
    DeepSpeed only without ``cpu``: on a machine without one, the processes
    would quietly train with DDP instead. That is refused, as is DeepSpeed
    when it is not installed (transformers would fail building the config).
    """
    import importlib.util

    def wanted(name: str) -> bool:
        flagged = any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in extra)
        launched = os.environ.get(f"ACCELERATE_USE_{name.upper()}", "false").lower() == "true"
        return bool(config.get(name)) or flagged or launched

    problems = []
    for name, engine in (("fsdp", "FSDP"), ("deepspeed", "DeepSpeed")):
        if wanted(name) and not gpu:
            problems.append(f"{engine} needs GPUs: accelerate enables it only for a GPU launch, so on CPU the "
                            "processes would silently train with DDP; on CPU launch with --multi_gpu (DDP, gloo)")
    if wanted("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        problems.append("DeepSpeed is not installed: pip install deepspeed")
    return problems
