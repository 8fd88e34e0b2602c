"""Completing a merged checkpoint: the tokenizer, chat template and generation config mergekit left out."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Sequence


def complete_checkpoint(directory: Path, sources: Sequence[Path]) -> List[str]:
    """Give a merged checkpoint the tokenizer, chat template and generation
    config it lacks, each from the first of ``sources`` (the donor model,
    then the other parents) that has one; say what was added."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    added = []
    if not (directory / "tokenizer_config.json").is_file():
        AutoTokenizer.from_pretrained(sources[0]).save_pretrained(directory)
        added.append(f"tokenizer copied from {sources[0]}")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if not tokenizer.chat_template:
        for source in (source for source in sources if (source / "tokenizer_config.json").is_file()):
            template = AutoTokenizer.from_pretrained(source).chat_template
            if template:
                tokenizer.chat_template = template
                tokenizer.save_pretrained(directory)
                added.append(f"chat template copied from {source}")
                break
    if not (directory / "generation_config.json").is_file():
        donor = next((source for source in sources if (source / "generation_config.json").is_file()), None)
        if donor is not None:
            shutil.copy(donor / "generation_config.json", directory / "generation_config.json")
            added.append(f"generation_config.json copied from {donor}")
        else:
            GenerationConfig.from_model_config(AutoConfig.from_pretrained(directory)).save_pretrained(directory)
            added.append("generation_config.json derived from config.json (no parent has one)")
    return added
