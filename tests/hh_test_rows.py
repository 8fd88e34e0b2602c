"""A few real Anthropic HH-RLHF pairs as TRL rows, read by the product's ``hh`` format."""

from __future__ import annotations

import gzip
import itertools
import tempfile
from pathlib import Path

from dpo_plugins.workflows.convert import read_trl_rows

HH_FILE = Path(__file__).resolve().parent.parent / "dpo_plugins" / "data" / "hh-rlhf" / "harmless-base-test-first400.jsonl.gz"


def hh_rows(n: int, start: int = 0) -> list[dict]:
    """``n`` conversational TRL rows (prompt, chosen, rejected) from lines ``start``.. of the HH slice."""
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as source, tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "slice.jsonl"
        path.write_text("".join(itertools.islice(source, start, start + n)), encoding="utf-8")
        return read_trl_rows(path, "hh")
