"""Eval throughput: per-pair policy and reference log-probs, plain two-forward vs packed.

"Plain" is RewardBench's way of scoring a DPO model: each batch of pairs is
one right-padded batch of ``[prompt + chosen]`` and ``[prompt + rejected]``
rows (TRL's collator, so the same truncation), full logits from the policy
and from the reference, ``log_softmax``, gather, sum over completion tokens.
"Packed" is what ``dpo eval`` runs: :func:`dpo_plugins.evals.reward_accuracy.
score_pairs` with the packed forward for both models; "packed + cached ref"
gives it the reference log-probs from the on-disk cache (filled before
timing), as ``dpo eval`` does after a training run or an earlier eval.
Rounds alternate the order; medians and ratios are printed, and the
implicit rewards of the three are checked to agree.

    python -m benchmarks.eval_throughput          # SmolLM2-135M, 32 HH pairs, 3 rounds
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time

import torch

from benchmarks.common import hh_rows, load_smollm2, print_table, summary


def tokenize_like_trl(rows, policy, ref, tokenizer):
    """Tokenized pairs exactly as TRL's DPOTrainer prepares them (its own _prepare_dataset)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False, max_length=None)
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        return trainer.train_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list()


def plain_logps(model, batch):
    """One padded forward over ``[chosen rows; rejected rows]``, full logits (RewardBench's way)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    token_logps = logits.log_softmax(-1).gather(2, batch["input_ids"][:, 1:, None])[..., 0]
    sums = (token_logps * batch["completion_mask"][:, 1:]).sum(1)
    return sums.chunk(2)


def evaluate(kind, policy, ref, pairs, options, collate, cached_ref=None):
    """Implicit rewards (chosen log-ratio, rejected log-ratio) of every pair."""
    from dpo_plugins.evals.reward_accuracy import score_pairs

    if kind == "packed":
        scores = score_pairs(policy, pairs, reference=ref, reference_logps=cached_ref, max_length=options.max_length,
                             batch_size=options.batch_size)
        return torch.tensor(scores.chosen_logratios), torch.tensor(scores.rejected_logratios)
    chosen, rejected = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), options.batch_size):
            batch = collate(pairs[start : start + options.batch_size])
            (pc, pr), (rc, rr) = plain_logps(policy, batch), plain_logps(ref, batch)
            chosen.append(pc - rc)
            rejected.append(pr - rr)
    return torch.cat(chosen).double(), torch.cat(rejected).double()


def run(options) -> dict:
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from dpo_plugins.adapters.ref_cache import RefLogpsCache, reference_logps

    policy, tokenizer = load_smollm2(options.model)
    ref = copy.deepcopy(policy)
    with torch.no_grad():  # a policy that differs from its reference, as after training
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 1e-3)
    pairs = tokenize_like_trl(hh_rows(options.pairs), policy, ref, tokenizer)
    policy.eval(), ref.eval()
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=options.max_length)
    with tempfile.TemporaryDirectory() as tmp:
        cache = RefLogpsCache(tmp)

        def from_cache():  # the lookup (hashing the reference weights and the data) is timed too
            return reference_logps(ref, tokenizer, pairs, options.max_length, "keep_start", options.batch_size, cache)[:2]

        from_cache()  # fill it
        kinds = {
            "plain two-forward": lambda: evaluate("plain", policy, ref, pairs, options, collate),
            "packed (ours)": lambda: evaluate("packed", policy, ref, pairs, options, collate),
            "packed + cached ref": lambda: evaluate("packed", policy, ref, pairs, options, collate, cached_ref=from_cache()),
        }
        seconds = {name: [] for name in kinds}
        results = {}
        for r in range(options.rounds):
            order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
            for name in order:
                start = time.perf_counter()
                results[name] = kinds[name]()
                seconds[name].append(time.perf_counter() - start)
                print(f"round {r + 1} {name}: {seconds[name][-1]:.1f}s", file=sys.stderr, flush=True)
    plain = torch.stack(results["plain two-forward"])
    diffs = {name: (torch.stack(v) - plain).abs().max().item() for name, v in results.items()}
    return {"rows": [summary(name, s, len(pairs)) for name, s in seconds.items()], "max_reward_diff": diffs}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local checkpoint (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    options = parse_args(argv)
    result = run(options)
    print_table(result["rows"], "plain two-forward", "pairs")
    for name, diff in result["max_reward_diff"].items():
        print(f"max |log-ratio difference| vs plain, {name}: {diff:.2e}")
    if options.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
