"""Training throughput: stock TRL ``DPOTrainer`` vs ours, in the same process.

Ours is ``PluginDPOTrainer`` as ``dpo train`` runs it (sigmoid loss, the
packed, prefix-shared forward, TRL's metrics). Both trainers start from the same weights, take the same batches in TRL's
order (the stock trainer's own dataloader: its sampler and seed) and run the
same optimizer step (AdamW, gradient clipping at ``max_grad_norm``). Rounds
alternate which one goes first; the table shows median seconds per round and
pairs/s, and the per-step losses of the two are compared.

    python -m benchmarks.train_throughput                    # SmolLM2-135M, 3 rounds x 2 steps
    python -m benchmarks.train_throughput --rss              # + peak RSS of each, in separate processes
    python -m benchmarks.train_throughput --ref-cache        # first run vs a rerun on cached reference log-probs
    python -m benchmarks.train_throughput --losses --rss     # sigmoid vs sigmoid+sft, WPO, LD-DPO (ours only)

Timings on a shared machine are noisy: compare the ratios, taken in one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import hh_rows, load_smollm2, peak_rss_mib, print_table, summary

OURS = "dpo-plugins (packed)"


def make_trainer(kind, model, ref_model, tokenizer, dataset, args, ref_cache=None):
    """Stock TRL's ``DPOTrainer``, or ours: ``PluginDPOTrainer``, what ``dpo train`` runs (sigmoid, packed forward)."""
    from trl import DPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    if kind == "stock":
        return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer)
    return PluginDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                            processing_class=tokenizer, ref_cache=ref_cache)


def dpo_args(output_dir, options, **overrides):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=options.batch_size,
        max_length=options.max_length,
        learning_rate=options.learning_rate,
        gradient_checkpointing=options.gradient_checkpointing,
        bf16=False,
        use_cpu=True,
        report_to=[],
        seed=options.seed,
        disable_tqdm=True,
        **overrides,
    )


class Stepper:
    """One trainer's optimizer loop, driven one batch at a time (what ``Trainer.train`` does per step)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.optimizer = trainer.create_optimizer()
        trainer.model.train()

    def step(self, batch) -> float:
        loss = self.trainer.compute_loss(self.trainer.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainer.model.parameters(), self.trainer.args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def batches_in_trl_order(trainer, count):
    loader = iter(trainer.get_train_dataloader())
    return [next(loader) for _ in range(count)]


# The A/B runs: stock TRL against ours, both on TRL's sigmoid loss.
AB_RUNS = {"stock": ("stock", {}), "packed": ("packed", {})}
# --losses: ours only, plain sigmoid against the loss API v2's token-level paths (docs/losses.md).
LOSS_RUNS = {
    "sigmoid": ("packed", {}),
    "sigmoid+sft": ("packed", {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}),
    "sigmoid, WPO": ("packed", {"use_weighting": True}),
    "sigmoid, LD-DPO 0.5": ("packed", {"ld_alpha": 0.5}),
}


def setup(options, tmp, runs):
    """One trainer per ``runs`` entry (name: (kind, DPOConfig overrides)), each on its own copy of the weights."""
    from datasets import Dataset

    base, tokenizer = load_smollm2(options.model)
    dataset = Dataset.from_list(hh_rows(options.pairs))
    trainers = {}
    for i, (name, (kind, overrides)) in enumerate(runs.items()):
        args = dpo_args(Path(tmp) / str(i), options, **overrides)
        trainers[name] = make_trainer(kind, copy.deepcopy(base), copy.deepcopy(base), tokenizer, dataset, args)
    del base
    return trainers


def time_alternating(options, runs) -> tuple[dict, dict]:
    """Seconds per round and per-step losses of each run, on the same batches; the order rotates each round."""
    torch.manual_seed(options.seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = setup(options, tmp, runs)
        steps = options.rounds * options.steps_per_round
        batches = batches_in_trl_order(next(iter(trainers.values())), steps)
        steppers = {name: Stepper(t) for name, t in trainers.items()}
        seconds = {name: [] for name in trainers}
        losses = {name: [] for name in trainers}
        names = list(trainers)
        for r in range(options.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                for batch in batches[r * options.steps_per_round : (r + 1) * options.steps_per_round]:
                    losses[name].append(steppers[name].step(batch))
                seconds[name].append(time.perf_counter() - start)
                print(f"round {r + 1} {name}: {seconds[name][-1]:.1f}s", file=sys.stderr, flush=True)
    return seconds, losses


def run_ab(options) -> dict:
    seconds, losses = time_alternating(options, AB_RUNS)
    pairs_per_round = options.steps_per_round * options.batch_size
    rows = [summary("stock TRL DPOTrainer", seconds["stock"], pairs_per_round), summary(OURS, seconds["packed"], pairs_per_round)]
    diffs = [abs(a - b) for a, b in zip(losses["stock"], losses["packed"])]
    return {"rows": rows, "losses": losses, "max_loss_diff": max(diffs)}


def run_losses(options) -> dict:
    """The cost of token-level access (sft), of WPO's ``log sum p^2`` and of LD-DPO's split, against sigmoid."""
    runs = {name: LOSS_RUNS[name] for name in options.losses or LOSS_RUNS}
    seconds, losses = time_alternating(options, runs)
    pairs_per_round = options.steps_per_round * options.batch_size
    return {"rows": [summary(name, seconds[name], pairs_per_round) for name in runs], "losses": losses}


def run_one_for_rss(options, name) -> dict:
    """Child process: ``steps_per_round`` steps of one trainer, then its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = setup(options, tmp, {name: {**AB_RUNS, **LOSS_RUNS}[name]})[name]
        stepper = Stepper(trainer)
        for batch in batches_in_trl_order(trainer, options.steps_per_round):
            stepper.step(batch)
    return {"kind": name, "peak_rss_mib": round(peak_rss_mib(), 1)}


def run_rss(options, names) -> list[dict]:
    results = []
    for name in names:
        argv = [sys.executable, "-m", "benchmarks.train_throughput", "--rss-child", name, *_forwarded(options)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


REF_CACHE_RUNS = {
    # name: (precompute_ref_log_probs, beta)
    "reference in every step": (False, 0.1),
    "first run (computes ref)": (True, 0.1),
    "rerun (cached ref)": (True, 0.5),
}


def run_ref_cache(options) -> dict:
    """A β sweep: a first run that computes the reference log-probs vs a rerun that reads them from disk.

    Every run is ``PluginDPOTrainer`` as ``dpo train`` builds it: the first
    two compute the reference (TRL's per-step reference forward; ours, once
    before training, stored in the cache), the rerun finds the entry. Each
    run's time covers building the trainer (tokenizing, hashing the
    reference weights and data, the precompute) and one epoch of
    ``steps_per_round`` steps; each round starts from an empty cache.
    """
    from datasets import Dataset

    from dpo_plugins.adapters.ref_cache import RefLogpsCache

    base, tokenizer = load_smollm2(options.model)
    rows = hh_rows(options.steps_per_round * options.batch_size)
    seconds = {name: [] for name in REF_CACHE_RUNS}
    losses = {name: [] for name in REF_CACHE_RUNS}
    reruns_read = []  # per round: the rerun left the first run's entry as it was (a miss rewrites it)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(options.rounds):
            cache = RefLogpsCache(Path(tmp) / f"cache-{r}")
            names = list(REF_CACHE_RUNS)
            if r % 2:  # alternate the two runs that compute the reference; the rerun needs the cache
                names[:2] = names[1::-1]
            for name in names:
                precompute, beta = REF_CACHE_RUNS[name]
                entries = _entries(cache)
                policy, ref = copy.deepcopy(base), None if precompute else copy.deepcopy(base)
                start = time.perf_counter()
                args = dpo_args(Path(tmp) / "out", options, beta=beta, precompute_ref_log_probs=precompute)
                trainer = make_trainer("packed", policy, ref, tokenizer, Dataset.from_list(rows), args, cache)
                stepper = Stepper(trainer)
                losses[name] = [stepper.step(batch) for batch in batches_in_trl_order(trainer, options.steps_per_round)]
                seconds[name].append(time.perf_counter() - start)
                print(f"round {r + 1} {name}: {seconds[name][-1]:.1f}s", file=sys.stderr, flush=True)
                if name == "rerun (cached ref)":
                    reruns_read.append(bool(entries) and _entries(cache) == entries)
                del trainer, stepper, policy, ref
    n_pairs = len(rows)
    per_step, first = losses["reference in every step"], losses["first run (computes ref)"]
    return {
        "rows": [summary(name, seconds[name], n_pairs) for name in REF_CACHE_RUNS],
        "losses": losses,
        "max_loss_diff": max(abs(a - b) for a, b in zip(per_step, first)),
        "reruns_read_the_cache": all(reruns_read),
    }


def _entries(cache) -> dict:
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in cache.root.glob("*.safetensors")}


def _forwarded(options) -> list[str]:
    argv = ["--pairs", options.pairs, "--steps-per-round", options.steps_per_round, "--batch-size", options.batch_size, "--max-length", options.max_length, "--seed", options.seed]
    if options.model:
        argv += ["--model", options.model]
    if options.gradient_checkpointing:
        argv.append("--gradient-checkpointing")
    return [str(a) for a in argv]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local checkpoint (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--pairs", type=int, default=64, help="HH pairs in the dataset")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off here for both")
    parser.add_argument("--rss", action="store_true", help="also measure each trainer's peak RSS in its own process")
    parser.add_argument("--ref-cache", action="store_true", help="measure the cached-reference rerun instead")
    parser.add_argument("--losses", nargs="*", choices=list(LOSS_RUNS), metavar="NAME",
                        help="ours only: sigmoid vs sigmoid+sft, WPO (--use-weighting) and LD-DPO (--ld-alpha 0.5); "
                             "names select some of them (e.g. just 'sigmoid' to time one tree against another)")
    parser.add_argument("--rss-child", choices=[*AB_RUNS, *LOSS_RUNS], help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    options = parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    if options.rss_child:
        print(json.dumps(run_one_for_rss(options, options.rss_child)))
        return 0
    if options.ref_cache:
        result = run_ref_cache(options)
        print_table(result["rows"], "first run (computes ref)", "pairs")
        print(f"max |loss difference|, per-step vs precomputed reference = {result['max_loss_diff']:.2e}")
        print(f"every rerun read the first run's cache entry: {result['reruns_read_the_cache']}")
    elif options.losses is not None:
        result = run_losses(options)
        print_table(result["rows"], result["rows"][0]["name"], "pairs")
        for name, losses in result["losses"].items():
            print(f"per-step losses, {name}: {losses}")
    else:
        result = run_ab(options)
        print_table(result["rows"], "stock TRL DPOTrainer", "pairs")
        print(f"per-step losses: stock {result['losses']['stock']}")
        print(f"                 ours   {result['losses']['packed']}")
        print(f"max |loss difference| = {result['max_loss_diff']:.2e}")
    if options.rss and not options.ref_cache:
        names = AB_RUNS if options.losses is None else [row["name"] for row in result["rows"]]
        result["rss"] = run_rss(options, names)
        for entry in result["rss"]:
            print(f"peak RSS {entry['kind']}: {entry['peak_rss_mib']:.0f} MiB")
    if options.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
