"""transformers' and datasets' per-load progress bars, off for a while."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def progress_bars_off() -> Iterator[None]:
    """Turn transformers' and datasets' per-load bars off; restore what was on when done."""
    import datasets
    import transformers

    was_transformers = transformers.utils.logging.is_progress_bar_enabled()
    was_datasets = datasets.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_transformers:
            transformers.utils.logging.enable_progress_bar()
        if was_datasets:
            datasets.enable_progress_bars()
