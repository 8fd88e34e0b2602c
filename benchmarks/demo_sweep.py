"""Which `dpo demo` training setting moves held-out implicit reward accuracy past chance?

The demo's split (``dpo_plugins.workflows.demo``): the shipped Azure file converted to
TRL pairs, the last ``--heldout`` pairs held out (never trained on), the
first ones train. Each run is the command a user types, in a child process:
``dpo train`` on the packed default path (``PluginDPOTrainer``, the
reference precomputed once), saving the model every ``--save-every`` steps
under a constant learning rate, so one run measures several step counts;
then ``dpo eval --reward-mode dpo`` of each checkpoint against the base
model on the held-out pairs. A table row per checkpoint: implicit reward
accuracy, its 95% Wilson interval, and the wall time of the training run.

The machine this ran on was shared, so the wall time of a run is recorded
with the load average next to it; the quiet-machine time is estimated from
the step count (docs/benchmarks.md). Run from the repository root::

    nice -n 15 .venv/bin/python -m benchmarks.demo_sweep --run full:lr=1e-5 --run lora:lr=2e-3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dpo_plugins.workflows.demo import DATA, split_pairs
from dpo_plugins.evals.stats import wilson_interval

DEFAULTS = {"lr": None, "beta": 0.1, "max_length": 512, "steps": 36, "batch": 8}


def parse_run(text: str) -> dict:
    """``KIND:key=value,...`` with KIND ``full`` or ``lora``, keys of :data:`DEFAULTS`."""
    kind, _, rest = text.partition(":")
    if kind not in ("full", "lora"):
        raise SystemExit(f"--run {text}: KIND must be full or lora")
    run = dict(DEFAULTS, kind=kind)
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"--run {text}: unknown key {key!r} (keys: {', '.join(DEFAULTS)})")
        run[key] = float(value) if key in ("lr", "beta") else int(value)
    if run["lr"] is None:
        raise SystemExit(f"--run {text}: lr= is required")
    return run


def dpo(*argv, threads: int) -> float:
    """Run ``dpo ARGV`` in a child process; return its wall time (s)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dpo_plugins", *map(str, argv)], check=True, env=env)
    return time.perf_counter() - started


def load() -> float:
    return os.getloadavg()[0]


def sweep_run(run: dict, train: Path, heldout: Path, work: Path, save_every: int, threads: int,
              eval_only: bool = False, model: str = "smollm2", judge_prompts: int = 0) -> list[dict]:
    """Train (unless ``eval_only``: a run stopped early keeps the checkpoints it saved) and score each checkpoint."""
    name = f"{run['kind']}-lr{run['lr']:g}-b{run['beta']:g}-L{run['max_length']}-s{run['steps']}"
    out = work / name
    lora = ["--lora"] if run["kind"] == "lora" else []
    load_before = load()
    train_s = None if eval_only else dpo("train", "--model", model, "--data", train, *lora, "--loss", "sigmoid",
                  "--beta", run["beta"], "--learning-rate", run["lr"], "--lr-scheduler-type", "constant",
                  "--max-steps", run["steps"], "--per-device-train-batch-size", run["batch"],
                  "--max-length", run["max_length"], "--gradient-checkpointing", "false", "--logging-steps", 1,
                  "--save-strategy", "steps", "--save-steps", save_every, "--save-only-model", "true",
                  "--seed", 0, "--disable-tqdm", "true", "--output-dir", out, threads=threads)
    load_after = load()
    rows = []
    for step in range(save_every, run["steps"] + 1, save_every):
        checkpoint = out / f"checkpoint-{step}"
        if eval_only and not (checkpoint / "trainer_state.json").is_file():
            continue
        report = out / f"eval-{step}"
        judge = (["--judge", "llm-pairwise", "--judge-param", f"model={model}", "--max-prompts", judge_prompts,
                  "--max-new-tokens", 48] if judge_prompts else [])  # the demo's judge, as its last step runs it
        eval_s = dpo("eval", "--model", checkpoint, "--ref", model, "--reward-mode", "dpo", "--data", heldout,
                     "--max-length", run["max_length"], "--no-progress", "--report", report, *judge, threads=threads)
        metrics = json.loads((report / "metrics.json").read_text())
        n = metrics["n_pairs"]
        correct = round(metrics["reward_accuracy"] * n)
        row = {**run, "at_step": step, "pairs_trained": step * run["batch"], "n_heldout": n,
               "accuracy": metrics["reward_accuracy"], "wilson_95": wilson_interval(correct, n - correct, 0),
               "mean_margin": metrics.get("mean_margin"), "train_wall_s": train_s and round(train_s, 1),
               "checkpoint_saved": time.strftime("%H:%M:%S", time.gmtime(checkpoint.stat().st_mtime)),
               "eval_wall_s": round(eval_s, 1), "load_avg_1m": [round(load_before, 2), round(load_after, 2)]}
        if judge_prompts:
            row["judge"] = {key: metrics[key] for key in ("wins", "ties", "losses", "win_rate", "win_rate_ci",
                                                          "first_position_rate", "position_consistency")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, type=parse_run, metavar="KIND:k=v,...")
    parser.add_argument("--model", default="smollm2", help="the base model (default smollm2, as the demo)")
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--judge-prompts", type=int, default=0,
                        help="also judge each checkpoint against the base model on this many held-out prompts")
    parser.add_argument("--save-every", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-only", action="store_true",
                        help="score the checkpoints an earlier (stopped) run saved, without training")
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo-sweep"))
    parser.add_argument("--results", type=Path, default=Path("/tmp/demo-sweep/results.jsonl"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    pairs = args.work / "pairs.hf.jsonl"
    dpo("convert", DATA, pairs, "--from", "azure", "--to", "hf", threads=args.threads)
    total = len(pairs.read_text(encoding="utf-8").splitlines())
    train, heldout = split_pairs(pairs, args.work, total - args.heldout, args.heldout)
    for run in args.run:
        for row in sweep_run(run, train, heldout, args.work, args.save_every, args.threads, args.eval_only,
                             args.model, args.judge_prompts):
            with args.results.open("a", encoding="utf-8") as results:
                results.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
