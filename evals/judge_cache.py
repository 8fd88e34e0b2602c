"""Judge answers kept on disk, so judging the same texts again costs nothing.

A judge's answer for one order of one comparison is a pure function of the
judge (its name and the plugin that provides it), its parameters and the
exact texts it reads (prompt, output a, output b, and the prompt's reference
answer for a rule judge). That is the key; AlpacaEval caches its annotations
the same way. Re-running ``dpo eval --judge`` on the same generations, or
``dpo judge-eval`` on the same pairs, then calls the judge for nothing.

An entry is one small JSON file under ``$DPO_PLUGINS_CACHE/judgments/``
holding the full key's digest, the judgment, the seconds the call took (per
comparison) and the token counts the judge reported. It is written
atomically. A file that cannot be read or whose key does not match is a
miss (and is replaced by the next answer); a cache that cannot be written
is a warning, never a failed run. A failed call (an exception, or a
judge's ``None`` for a comparison it could not judge) is never stored.

A parameter that names an existing file or folder (a local judge model) is
keyed by its path plus the size and modification time of the files in it,
so replacing the weights there gives a new key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from dpo_plugins.atomic import write_text

logger = logging.getLogger("dpo_plugins.judge_cache")
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class CachedAnswer:
    """One comparison's judgment with what it cost when it was first computed."""

    judgment: Any
    seconds: float
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None


def judge_identity(name: str, provider: str, params: Mapping[str, Any]) -> str:
    """The part of every key that names the judge and its settings (``references`` excluded: per comparison)."""
    settings = {k: _keyed_value(v) for k, v in sorted(params.items()) if k != "references"}
    return json.dumps({"format": FORMAT_VERSION, "judge": name, "provider": provider, "params": settings},
                      sort_keys=True, ensure_ascii=False, default=str)


def answer_key(identity: str, prompt: str, output_a: str, output_b: str, reference: Optional[str] = None) -> str:
    payload = json.dumps([identity, prompt, output_a, output_b, reference], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _keyed_value(value):
    """A parameter as it enters the key: a path that exists also by its files' sizes and times."""
    if isinstance(value, (str, os.PathLike)) and str(value):
        try:
            path = Path(value)
            if path.exists():
                files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
                return {"path": str(path.resolve()),
                        "files": [[str(f.relative_to(path)) if f != path else f.name, f.stat().st_size,
                                   f.stat().st_mtime_ns] for f in files]}
        except (OSError, ValueError):
            pass
    return value


class JudgeCache:
    """Answers on disk under ``root`` (default ``$DPO_PLUGINS_CACHE/judgments``)."""

    def __init__(self, root: Optional[Path] = None):
        if root is None:
            from dpo_plugins.adapters.models import cache_dir

            root = cache_dir() / "judgments"
        self.root = Path(root)
        self.unwritable = False

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def load(self, key: str) -> Optional[CachedAnswer]:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry.get("key") != key:
                raise ValueError("its key does not match")
            return CachedAnswer(entry["judgment"], float(entry["seconds"]), entry.get("prompt_tokens"),
                                entry.get("completion_tokens"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning("judge cache entry %s is unusable (%s): judging again", path, error)
            return None

    def store(self, key: str, answer: CachedAnswer) -> None:
        if answer.judgment is None:  # a failed comparison is never remembered
            return
        entry = {"key": key, "judgment": answer.judgment, "seconds": answer.seconds,
                 "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens}
        try:
            write_text(self.path(key), json.dumps(entry, allow_nan=False) + "\n")
        except OSError as error:  # a full or read-only cache costs the next run time, never this run's answers
            if not self.unwritable:
                logger.warning("judge cache %s is not writable (%s): answers are not kept", self.root, error)
            self.unwritable = True
