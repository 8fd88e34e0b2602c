"""What the benchmarks share: real HH-RLHF pairs, SmolLM2, medians and ratios.

Run from the repository root (``python -m benchmarks.train_throughput``).
"""

from __future__ import annotations

import statistics
from importlib import resources


def hh_rows(limit: int) -> list[dict]:
    """The first ``limit`` pairs of the shipped HH-RLHF slice, as TRL conversational rows."""
    from dpo_plugins.workflows.convert import read_trl_rows

    path = resources.files("dpo_plugins") / "data" / "hh-rlhf" / "harmless-base-test-first400.jsonl.gz"
    return read_trl_rows(str(path), "hh")[:limit]


def load_smollm2(model_path=None):
    """SmolLM2-135M-Instruct in float32 (or a local checkpoint), with its tokenizer."""
    from dpo_plugins.adapters.models import load_model_and_tokenizer, materialise_smollm2

    return load_model_and_tokenizer(str(model_path or materialise_smollm2()))


def peak_rss_mib() -> float:
    """This process's own peak resident set size, from /proc (Linux, KiB).

    Not ``getrusage().ru_maxrss``: Linux carries that high-water mark across
    fork + exec, so a child started by a large parent reports the parent's.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def summary(name: str, seconds: list[float], units: float) -> dict:
    median = statistics.median(seconds)
    return {"name": name, "rounds": [round(s, 3) for s in seconds], "median_s": round(median, 3), "per_s": round(units / median, 3)}


def print_table(rows: list[dict], baseline: str, unit: str) -> None:
    base = next(r for r in rows if r["name"] == baseline)["median_s"]
    print(f"{'':<28}{'median s':>10}{unit + '/s':>12}{'speed-up':>10}   rounds (s)")
    for r in rows:
        print(f"{r['name']:<28}{r['median_s']:>10.2f}{r['per_s']:>12.2f}{base / r['median_s']:>9.2f}x   {r['rounds']}")
