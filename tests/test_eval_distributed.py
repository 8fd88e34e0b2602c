"""`accelerate launch` with two CPU processes gives the same report as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import TWO_PROCESSES, build_tiny_model

ROWS = [
    {"prompt": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
     "chosen": [{"role": "assistant", "content": str(2 * i)}],
     "rejected": [{"role": "assistant", "content": f"{2 * i + 1}, or so I believe"}]}
    for i in range(7)
]


@pytest.mark.slow
def test_two_processes_give_identical_results(tmp_path, tokenizer):
    paths = {}
    for name, seed in (("policy", 1), ("ref", 0)):
        paths[name] = tmp_path / name
        build_tiny_model(tokenizer, seed=seed).save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    args = ["eval", "--model", paths["policy"], "--ref", paths["ref"], "--data", data, "--batch-size", "2",
            "--judge", "exact-match", "--max-new-tokens", "4", "--no-progress", "--report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = {
        "one": [sys.executable, "-m", "dpo_plugins"],
        "two": [*TWO_PROCESSES, "-m", "dpo_plugins"],
    }
    outputs = {}
    for name, command in commands.items():
        # Each run its own reference cache, so both compute (and the two processes share one entry).
        result = subprocess.run(command + [str(a) for a in args] + [tmp_path / name],
                                env={**env, "DPO_PLUGINS_CACHE": str(tmp_path / f"cache-{name}")},
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = result.stdout
    assert outputs["two"].count('"n_pairs": 7') == 1  # only the main process reports
    for file in ("pairs.jsonl", "generations.jsonl"):
        assert (tmp_path / "one" / file).read_text() == (tmp_path / "two" / file).read_text(), file
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert (one.pop("processes"), two.pop("processes")) == (1, 2)
    assert one == two and one["n_pairs"] == 7
    assert len(list((tmp_path / "cache-two" / "ref-logps").iterdir())) == 1
