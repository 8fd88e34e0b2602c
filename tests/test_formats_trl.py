"""The HF output of ``dpo convert`` trains in stock TRL ``DPOTrainer`` as is."""

from __future__ import annotations

import math

from dpo_plugins.cli import main
from conftest import build_tiny_model
from test_formats import HH

from dpo_plugins.workflows.convert import read_trl_rows


def test_hh_to_azure_to_hf_output_trains_a_step_in_stock_dpo_trainer(tmp_path, tokenizer):
    import datasets
    from trl import DPOConfig, DPOTrainer

    assert main(["convert", str(HH), str(tmp_path / "az.jsonl"), "--to", "azure", "--skip-invalid"]) == 0
    assert main(["convert", str(tmp_path / "az.jsonl"), str(tmp_path / "hf-dataset"), "--to", "hf"]) == 0
    dataset = datasets.load_from_disk(str(tmp_path / "hf-dataset")).select(range(4))
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, max_length=128,
                     bf16=False, report_to=[], use_cpu=True, save_strategy="no",
                     logging_steps=1)
    trainer = DPOTrainer(model=build_tiny_model(tokenizer), ref_model=build_tiny_model(tokenizer), args=args,
                         train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    loss = trainer.state.log_history[0]["loss"]
    assert math.isfinite(loss) and abs(loss - math.log(2)) < 0.05  # a random model: margin ~ 0
    assert "rewards/accuracies" in trainer.state.log_history[0]


def test_token_checks_match_what_dpo_trainer_builds_and_drops(tmp_path, tokenizer, smollm2_dir):
    import datasets
    from trl import DPOConfig, DPOTrainer

    from dpo_plugins.formats.token_checks import TokenChecks
    from dpo_plugins.workflows.convert import Report, _formats, records

    rows = read_trl_rows(HH)[:40]
    max_length = 128
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_length=max_length, bf16=False, report_to=[],
                     use_cpu=True)
    trainer = DPOTrainer(model=build_tiny_model(tokenizer), ref_model=build_tiny_model(tokenizer), args=args,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    kept = trainer.train_dataset

    checks = TokenChecks(str(smollm2_dir), max_length)
    ours, dropped = [], 0
    for _, _, record in list(records(HH, None, Report(str(HH)), _formats()))[:40]:
        problems = list(checks.check(record))
        if any(p.rule == "prompt-too-long" for p in problems):
            dropped += 1
        else:
            ours.append(checks.tokenize(record)[:3])
    assert dropped > 0 and len(kept) == 40 - dropped and checks.summary()["rows_trl_drops"] == dropped
    assert [list(t) for t in ours] == [[r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]] for r in kept]


def test_template_checks_catch_a_second_system_prompt_and_unrenderable_rows(tmp_path, smollm2_dir, capsys):
    import json

    from dpo_plugins.cli import main

    row = {"prompt": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Hello?"}],
           "chosen": [{"role": "assistant", "content": "Hi."}], "rejected": [{"role": "assistant", "content": "Yo."}]}
    # SmolLM2's template concatenates content as a string: text parts crash it (and would crash training)
    parts = {"prompt": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
             "chosen": [{"role": "assistant", "content": "Hi."}], "rejected": [{"role": "assistant", "content": "Yo."}]}
    source = tmp_path / "sys.jsonl"
    source.write_text(json.dumps(row) + "\n" + json.dumps(parts) + "\n")
    assert main(["validate", str(source), "--model", str(smollm2_dir)]) == 1
    out = capsys.readouterr().out
    assert f"{source}:1: prompt: the rendered prompt has 2 system sections for 1 system message(s)" in out
    assert f"{source}:2: $: the tokenizer's chat template cannot render this row: TypeError" in out
    assert "prompt_tokens: {'p50': " in out


def test_template_checks_catch_double_bos_and_a_trailing_space(tmp_path, smollm2_dir, capsys):
    """Pre-rendered chat text in standard rows, read by a tokenizer that adds BOS itself."""
    import json

    from transformers import AutoTokenizer

    from dpo_plugins.cli import main

    adds_bos = tmp_path / "tokenizer-adds-bos"
    AutoTokenizer.from_pretrained(smollm2_dir, add_bos_token=True).save_pretrained(adds_bos)
    rows = [
        {"prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "chosen": "Hello.", "rejected": "Go."},
        {"prompt": "The capital of France is ", "chosen": "Paris.", "rejected": "Rome."},
    ]
    source = tmp_path / "standard.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["validate", str(source), "--model", str(adds_bos)]) == 1
    out = capsys.readouterr().out
    assert f"{source}:1: prompt: the prompt starts with two BOS tokens [double-bos]" in out
    assert f"{source}:2: prompt: the tokenized prompt is not a prefix" in out
    assert "ends with whitespace" in out


def test_truncation_checks(tmp_path, smollm2_dir, capsys):
    import json

    from dpo_plugins.cli import main

    shared = "word " * 30
    rows = [
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": shared + "yes"}],
         "rejected": [{"role": "assistant", "content": shared + "no"}]},
        {"prompt": [{"role": "user", "content": "word " * 60}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Short."}],
         "rejected": [{"role": "assistant", "content": "Short, then more words than max_length " + "x " * 40}]},
    ]
    source = tmp_path / "long.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["validate", str(source), "--model", str(smollm2_dir), "--max-length", "40", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    found = {(p["line"], p["rule"]) for p in report["problems"]}
    assert (1, "truncated-identical") in found
    assert (2, "prompt-too-long") in found and report["token_stats"]["rows_trl_drops"] == 1
    assert (3, "truncated-completion") in found and (3, "truncated-identical") not in found
    assert all(line != 3 or rule == "truncated-completion" for line, rule in found)


def test_example_token_limit_applies_to_hosted_formats(tmp_path, smollm2_dir):
    from dpo_plugins.formats import token_checks
    from dpo_plugins.records import PreferenceRecord

    checks = token_checks.TokenChecks(str(smollm2_dir), None, example_limit=20)
    record = PreferenceRecord(prompt=[{"role": "user", "content": "Hi"}],
                              chosen=[{"role": "assistant", "content": "word " * 40}],
                              rejected=[{"role": "assistant", "content": "No."}])
    problems = list(checks.check(record))
    assert [p.rule for p in problems] == ["max-tokens"]
    assert problems[0].message.endswith("tokens; examples hold at most 20")
