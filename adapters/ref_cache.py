"""Reference log-probs computed once and kept on disk.

The reference model never changes during a DPO run, so its per-pair
log-probs are a pure function of (the tokenized pairs, the reference
weights, the tokenizer and chat template, the truncation). That function's
value is stored under a key made of exactly those things, so it is reused
across epochs, across runs that only change β or the loss, and by ``dpo
eval``, while a change to any of them gives a new key.

An entry is one safetensors file (never pickle): ``chosen`` and ``rejected``
float64 tensors of shape ``(N,)`` plus metadata holding the full key and a
SHA-256 of the tensor bytes. A file whose metadata does not match the key,
whose checksum does not match its contents, or that cannot be parsed is
reported and recomputed, never reused. Writes go to a temporary file renamed
into place, so a crash never leaves a half-written entry.

Under several processes (``accelerate launch``, one node or many) every
process reads the entry; unless all of them found it valid they compute it
together, each its share of the batches (:func:`~.distributed.map_shared`),
gather it, and only the main process writes it: no two ranks ever write one
entry, and no rank reads one that is being written (the rename is atomic).
Nodes without a shared cache folder simply miss on the nodes that lack it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from dpo_plugins.adapters.distributed import every_process, is_main_process, map_shared
from dpo_plugins.adapters.models import cache_dir
from dpo_plugins.atomic import atomic_file
from dpo_plugins.adapters.packing import packed_pair_logps

logger = logging.getLogger("dpo_plugins.ref_cache")
FORMAT_VERSION = "3"  # 3: the key covers the model's config; 2: float64 sums (1 held float32)
# Config fields about where a model came from or how it is run, not what it computes (the dtype is in the weights).
RUNTIME_CONFIG_FIELDS = frozenset({
    "_name_or_path", "architectures", "dtype", "torch_dtype", "transformers_version", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict",
})


@dataclass(frozen=True)
class RefCacheKey:
    """Everything the reference log-probs depend on, each as a digest or a value."""

    dataset: str
    model: str
    tokenizer: str
    max_length: Optional[int]
    truncation_mode: str
    ld_alpha: Optional[float] = None  # LD-DPO's sums are another quantity than the plain ones

    def digest(self) -> str:
        payload = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def pairs_fingerprint(pairs: Iterable[dict]) -> str:
    """SHA-256 of the tokenized pairs, in order (the content, not a file name or a path)."""
    h = hashlib.sha256()
    for pair in pairs:
        for field in ("prompt_ids", "chosen_ids", "rejected_ids"):
            ids = list(pair[field])
            h.update(len(ids).to_bytes(8, "little"))
            h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model) -> str:
    """SHA-256 of the class, the config and the weights (names, dtypes, shapes, values).

    The config counts because not everything a model computes with is in its
    weights (rotary ``rope_theta`` / ``rope_scaling``, a sliding window,
    soft-capping); where the model came from and how it is run do not
    (:data:`RUNTIME_CONFIG_FIELDS`), so two paths to one model share entries.
    """
    config = {k: v for k, v in model.config.to_dict().items() if k not in RUNTIME_CONFIG_FIELDS}
    h = hashlib.sha256(json.dumps({"class": type(model).__name__, "config": config}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the vocabulary and rules, the special tokens and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = {
        "class": type(tokenizer).__name__,
        "backend": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def make_key(pairs: Sequence[dict], model, tokenizer, max_length: Optional[int], truncation_mode: str,
             ld_alpha: Optional[float] = None) -> RefCacheKey:
    return RefCacheKey(
        dataset=pairs_fingerprint(pairs),
        model=model_fingerprint(model),
        tokenizer=tokenizer_fingerprint(tokenizer),
        max_length=max_length,
        truncation_mode=truncation_mode,
        ld_alpha=ld_alpha,
    )


class RefLogpsCache:
    """Reference log-probs on disk under ``root`` (default: ``$DPO_PLUGINS_CACHE/ref-logps``)."""

    def __init__(self, root: Optional[Path] = None):
        self.root = Path(root) if root is not None else cache_dir() / "ref-logps"

    def path(self, key: RefCacheKey) -> Path:
        return self.root / f"{key.digest()}.safetensors"

    def load(self, key: RefCacheKey, n_pairs: int):
        """``(chosen, rejected)`` for ``key``, or ``None`` when absent, mismatched or corrupted."""
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                chosen, rejected = handle.get_tensor("chosen"), handle.get_tensor("rejected")
        except Exception as error:  # any unreadable file is a miss, whatever the parser says
            logger.warning("reference log-prob cache %s is unreadable (%s): recomputing", path, error)
            return None
        problem = _problem(metadata, key, chosen, rejected, n_pairs)
        if problem:
            logger.warning("reference log-prob cache %s: %s: recomputing", path, problem)
            return None
        return chosen, rejected

    def store(self, key: RefCacheKey, chosen, rejected) -> Path:
        """Write one entry atomically (temporary file, then rename)."""
        from safetensors.torch import save_file

        chosen = chosen.detach().to("cpu", torch.float64).contiguous()
        rejected = rejected.detach().to("cpu", torch.float64).contiguous()
        metadata = {"key": json.dumps(asdict(key), sort_keys=True), "sha256": _checksum(chosen, rejected)}
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path(key)) as temporary:
            save_file({"chosen": chosen, "rejected": rejected}, str(temporary), metadata=metadata)
        return self.path(key)

    def get_or_compute(self, key: RefCacheKey, n_pairs: int, compute: Callable[[], tuple]):
        """``(chosen, rejected, hit)``: the cached entry, or ``compute()``'s result, stored.

        Under several processes every process calls this: all use the entry
        when all of them read it, else all run ``compute`` (which may split
        the work among them) and the main process alone stores the result.
        """
        cached = self.load(key, n_pairs)
        if every_process(cached is not None):
            return (*cached, True)
        chosen, rejected = compute()
        if is_main_process():
            self.store(key, chosen, rejected)
        return chosen, rejected, False


def _checksum(chosen, rejected) -> str:
    h = hashlib.sha256()
    for tensor in (chosen, rejected):
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def _problem(metadata: dict, key: RefCacheKey, chosen, rejected, n_pairs: int) -> Optional[str]:
    if metadata.get("key") != json.dumps(asdict(key), sort_keys=True):
        return "its key does not match (different data, model, tokenizer or truncation)"
    if chosen.shape != (n_pairs,) or rejected.shape != (n_pairs,):
        return f"it holds {tuple(chosen.shape)} values for {n_pairs} pairs"
    if chosen.dtype != torch.float64 or rejected.dtype != torch.float64:
        return "its tensors are not float64"
    if metadata.get("sha256") != _checksum(chosen, rejected):
        return "its checksum does not match its contents"
    return None


def reference_logps(
    model,
    tokenizer,
    pairs: Sequence[dict],
    max_length: Optional[int] = None,
    truncation_mode: str = "keep_start",
    batch_size: int = 8,
    cache: Optional[RefLogpsCache] = None,
    ld_alpha: Optional[float] = None,
):
    """``(chosen, rejected, hit)``: float64 reference log-prob sums of ``pairs``, from the cache when valid.

    On a miss they are computed with the packed forward without gradient,
    ``batch_size`` pairs at a time (the batches dealt to the processes under
    ``accelerate launch``), the log-softmax in float64 as in ``dpo eval``,
    and stored. The results do not depend on ``batch_size`` or on how many
    processes share the work.
    With ``ld_alpha`` they are LD-DPO's sums (:func:`.modifiers.ld_sums`).
    """
    cache = cache or RefLogpsCache()
    key = make_key(pairs, model, tokenizer, max_length, truncation_mode, ld_alpha)

    def batch_logps(start):
        with torch.no_grad():
            out = packed_pair_logps(model, pairs[start : start + batch_size], max_length, truncation_mode,
                                    logps_dtype=torch.float64, per_token=ld_alpha is not None)
        if ld_alpha is not None:
            out = _ld_pair_sums(*out, ld_alpha)
        return out.chosen_logps.cpu(), out.rejected_logps.cpu()

    def compute():
        batches = map_shared(range(0, len(pairs), batch_size), batch_logps)
        empty = torch.zeros(0, dtype=torch.float64)
        if not batches:
            return empty, empty
        return torch.cat([chosen for chosen, _ in batches]), torch.cat([rejected for _, rejected in batches])

    return cache.get_or_compute(key, len(pairs), compute)


def _ld_pair_sums(sums, tokens, ld_alpha):
    """``sums`` with LD-DPO's length-desensitised chosen/rejected sums in place of the plain ones."""
    from .modifiers import ld_sums

    chosen, rejected = ld_sums(tokens, ld_alpha).chunk(2, dim=0)
    return dataclasses.replace(sums, chosen_logps=chosen, rejected_logps=rejected)
