"""One-off check: reward-bench 0.1.4's own DPOInference scores vs `dpo eval --tokenization rewardbench`.

Runs in the throwaway environment of make_expected.py, on two models saved
by the project's venv and the reports `dpo eval` wrote for them:

    /tmp/rb-venv/bin/python tests/data/rewardbench/check_scores.py POLICY_DIR REF_DIR REPORTS_PREFIX

(REPORTS_PREFIX-dpo, -ref-free-sum, -ref-free-mean, -ref-free-norm are the
`--report` folders of the four reward modes). Each row goes through
prepare_dialogue_from_tokenizer and DPOInference.tokenize_row, is padded as
TRL's DPODataCollatorWithPadding pads (right, pad = EOS, labels -100,
attention 0; a batch of one row), and scored by DPOInference.inference_step
in float32 on the CPU, as run_dpo.py does without a GPU. Prints the largest
per-pair difference for each mode and whether every verdict agrees.
"""

import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_expected import load, stand_ins, tokenizer_for_transformers_4  # noqa: E402

if __name__ == "__main__":
    policy_dir, ref_dir, prefix = sys.argv[1:4]
    utils, dpo = stand_ins()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_for_transformers_4(Path(policy_dir)))
    tokenizer.pad_token = tokenizer.eos_token
    models = {name: AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
              for name, path in (("policy", policy_dir), ("ref", ref_dir))}
    rows = [json.loads(line) for line in (Path(__file__).resolve().parent / "rows.jsonl").read_text().splitlines()]
    for mode, ref_free_type in (("dpo", None), ("ref-free-sum", "sum"), ("ref-free-mean", "avg"), ("ref-free-norm", "norm")):
        inference = dpo.DPOInference(models["policy"], models["ref"] if mode == "dpo" else None, tokenizer=tokenizer,
                                     accelerator=types.SimpleNamespace(device="cpu"), ref_free_norm=ref_free_type or "sum")
        ours = [json.loads(line) for line in Path(f"{prefix}-{mode}/pairs.jsonl").read_text().splitlines()]
        worst, agree = 0.0, True
        for row, mine in zip(rows, ours):
            example = utils.prepare_dialogue_from_tokenizer(dict(row), tokenizer)  # it rewrites the prompt in place
            features = inference.tokenize_row({"prompt": example["prompt"], "text_chosen": example["text_chosen"],
                                               "text_rejected": example["text_rejected"]})
            batch = {key: torch.tensor([value]) for key, value in features.items()
                     if key.startswith(("chosen_", "rejected_"))}
            chosen, rejected = inference.inference_step(batch, ref_free=mode != "dpo")
            worst = max(worst, abs(chosen.item() - mine["chosen_score"]), abs(rejected.item() - mine["rejected_score"]))
            if "-v" in sys.argv:  # per row: its length and both differences
                print(mode, len(features["chosen_input_ids"]), chosen.item() - mine["chosen_score"], rejected.item() - mine["rejected_score"])
            agree &= (chosen.item() > rejected.item()) == mine["correct"]
        print(f"{mode}: largest |reward-bench - dpo eval| per answer {worst:.2e}; verdicts agree: {agree}")
