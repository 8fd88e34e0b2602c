"""RewardBench-exact scoring: reward-bench 0.1.4's own token ids, its reductions, per-subset accuracy, its layouts.

``tests/data/rewardbench/expected_ids.json`` holds the ids reward-bench's
code produced from ``rows.jsonl`` with the real SmolLM2 tokenizer
(``make_expected.py`` says how; reward-bench pins transformers 4.51, so it
ran once in a throwaway environment).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import build_tiny_model
from dpo_plugins.adapters.rewardbench_tokenization import tokenize_pair_rewardbench
from dpo_plugins.cli import main
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.evals.reward_accuracy import accuracy_by_subset, score_pairs
from dpo_plugins.evals.rewardbench_sections import section_scores
from dpo_plugins.formats.rewardbench import subsets_of
from dpo_plugins.workflows.convert import read_trl_rows
from test_eval_cli import models  # noqa: F401  (the tiny policy and reference checkpoints)

DATA = Path(__file__).parent / "data" / "rewardbench"
ROWS = DATA / "rows.jsonl"


def expected_rows() -> list[dict]:
    return json.loads((DATA / "expected_ids.json").read_text())["rows"]


def raw_rows() -> list[dict]:
    return [json.loads(line) for line in ROWS.read_text(encoding="utf-8").splitlines()]


def test_token_ids_equal_reward_benchs_own(tokenizer):
    expected = expected_rows()
    assert len(expected) == len(raw_rows()) == 7
    for number, (row, want) in enumerate(zip(read_trl_rows(ROWS, "rewardbench"), expected), start=1):
        pair = tokenize_pair_rewardbench(row, tokenizer)
        for side in ("chosen", "rejected"):
            labels = want[f"{side}_labels"]
            prompt_length = sum(label == -100 for label in labels)
            assert pair["prompt_ids"] + pair[f"{side}_ids"] == want[f"{side}_input_ids"], (number, side)
            assert len(pair["prompt_ids"]) == prompt_length, (number, side)
            assert labels[prompt_length:] == pair[f"{side}_ids"]


def test_the_fixture_covers_truncation_merging_roles_and_layouts(tokenizer):
    rows = raw_rows()
    assert {type(row["prompt"]) for row in rows} == {str, list}
    last = expected_rows()[-1]
    assert len(last["chosen_input_ids"]) == 2048 and sum(x == -100 for x in last["chosen_labels"]) == 128
    assert last["chosen_input_ids"][0] != tokenizer.bos_token_id  # the prompt lost its start (keep_end)
    first = expected_rows()[0]
    assert first["chosen_input_ids"][0] == tokenizer.bos_token_id and first["chosen_input_ids"][-1] == tokenizer.eos_token_id
    # roles by position: a prompt whose turns all say "user" is rendered user / assistant / user
    assert tokenizer.decode(tokenize_pair_rewardbench(read_trl_rows(ROWS, "rewardbench")[5], tokenizer)["prompt_ids"]) \
        .count("<|im_start|>assistant") == 1


def reward_bench_scores(model, ids_and_labels, reduction: str) -> list[float]:
    """reward-bench's DPOInference.get_batch_logps arithmetic, written from its description: the logits of a
    right-padded batch, log-softmax, the label of each next position, masked where the label is -100; then the
    sum, the mean over unmasked positions, or minus the L2 norm of the masked per-token log-probs."""
    import torch

    width = max(len(ids) for ids, _ in ids_and_labels)
    scores = []
    for ids, row_labels in ids_and_labels:  # a batch of one padded row at a time bounds memory (2048 x 49k logits)
        input_ids = torch.zeros((1, width), dtype=torch.long)
        labels = torch.full((1, width), -100, dtype=torch.long)
        attention = torch.zeros((1, width), dtype=torch.long)
        input_ids[0, : len(ids)] = torch.tensor(ids)
        labels[0, : len(ids)] = torch.tensor(row_labels)
        attention[0, : len(ids)] = 1
        with torch.no_grad():
            logits = model(input_ids, attention_mask=attention).logits[:, :-1].double()
        labels = labels[:, 1:].clone()
        mask = labels != -100
        labels[~mask] = 0
        per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
        if reduction == "avg":
            scores.append(((per_token * mask).sum(-1) / mask.sum(-1)).item())
        elif reduction == "norm":
            scores.append((-torch.norm(per_token * mask, p=2, dim=-1)).item())
        else:
            scores.append((per_token * mask).sum(-1).item())
    return scores


@pytest.mark.parametrize("reduction, mode", [("sum", "ref-free-sum"), ("avg", "ref-free-mean"), ("norm", "ref-free-norm")])
def test_reference_free_modes_equal_reward_benchs_on_its_ids(tokenizer, reduction, mode):
    model = build_tiny_model(tokenizer, seed=3).eval()
    count = 6  # the 2048-token row is scored end to end below; here it would only cost minutes
    pairs = [tokenize_pair_rewardbench(row, tokenizer) for row in read_trl_rows(ROWS, "rewardbench")[:count]]
    ours = score_pairs(model, pairs, mode=mode, max_length=None, forward="plain", batch_size=1)
    for side, scores in (("chosen", ours.chosen_scores), ("rejected", ours.rejected_scores)):
        theirs = reward_bench_scores(model, [(row[f"{side}_input_ids"], row[f"{side}_labels"])
                                             for row in expected_rows()[:count]], reduction)
        assert scores == pytest.approx(theirs, abs=1e-6), side


def test_dpo_eval_rewardbench_per_pair_and_per_subset(models, tmp_path, capsys):  # noqa: F811
    import torch

    paths = models
    report = tmp_path / "report"
    assert main(["eval", "--model", str(paths["policy"]), "--ref", str(paths["ref"]), "--data", str(ROWS),
                 "--tokenization", "rewardbench", "--report", str(report), "--batch-size", "1", "--no-progress"]) == 0
    capsys.readouterr()
    metrics = json.loads((report / "metrics.json").read_text())
    pairs = [json.loads(line) for line in (report / "pairs.jsonl").read_text().splitlines()]
    assert metrics["tokenization"] == "rewardbench" and metrics["n_pairs"] == 7 and metrics["n_dropped"] == 0

    from transformers import AutoModelForCausalLM

    models = {name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval() for name, path in paths.items()}
    for side in ("chosen", "rejected"):
        ids = [(row[f"{side}_input_ids"], row[f"{side}_labels"]) for row in expected_rows()]
        theirs = [p - r for p, r in zip(reward_bench_scores(models["policy"], ids, "sum"),
                                        reward_bench_scores(models["ref"], ids, "sum"))]
        assert [pair[f"{side}_logratio"] for pair in pairs] == pytest.approx(theirs, abs=1e-5)
    subsets = [row["subset"] for row in raw_rows()]
    assert [pair["subset"] for pair in pairs] == subsets
    assert metrics["subsets"] == accuracy_by_subset([pair["correct"] for pair in pairs], subsets)
    assert metrics["subsets"]["anthropic_harmless"]["n_pairs"] == 2
    accuracy = {k: v["reward_accuracy"] for k, v in metrics["subsets"].items()}
    assert metrics["rewardbench_sections"] == section_scores(accuracy)
    assert "| tokenization | rewardbench |" in (report / "report.md").read_text()


def test_section_scores_weight_subsets_by_reward_benchs_counts():
    scores = section_scores({"alpacaeval-easy": 1.0, "refusals-dangerous": 1.0, "xstest-should-respond": 0.0,
                             "math-prm": 0.5, "hep-go": 1.0, "anthropic_harmless": 0.25})
    assert scores == {"Chat": 1.0, "Chat Hard": None, "Safety": pytest.approx(100 / 350),
                      "Reasoning": pytest.approx((0.5 * 984 + 164) / (984 + 164))}
    assert section_scores({"anthropic_harmless": 0.5}) is None  # pref-test-sets have no sections


def test_accuracy_by_subset_is_correct_over_total():
    assert accuracy_by_subset([True, False, True, False], ["a", "a", "b", "c"]) == {
        "a": {"n_pairs": 2, "reward_accuracy": 0.5}, "b": {"n_pairs": 1, "reward_accuracy": 1.0},
        "c": {"n_pairs": 1, "reward_accuracy": 0.0}}


def test_the_rewardbench_format_detects_both_layouts_and_keeps_subsets(tmp_path):
    rows = raw_rows()
    core = tmp_path / "core.jsonl"
    core.write_text(json.dumps(rows[0]) + "\n")
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps(rows[3]) + "\n")
    for path in (core, prefs):
        assert main(["convert", str(path), str(tmp_path / "back.jsonl")]) == 0
        assert json.loads((tmp_path / "back.jsonl").read_text()) == json.loads(path.read_text())
    assert subsets_of(ROWS) == [row["subset"] for row in rows]
    no_subset = tmp_path / "no_subset.jsonl"
    no_subset.write_text(json.dumps({k: v for k, v in rows[3].items() if k != "subset"}) + "\n")
    assert subsets_of(no_subset) is None


def test_a_prompt_ending_with_the_assistant_is_refused(tokenizer):
    row = {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
           "chosen": "A", "rejected": "B"}
    with pytest.raises(DpoPluginsError, match="last is not the user's"):
        tokenize_pair_rewardbench(row, tokenizer)
