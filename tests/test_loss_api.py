"""Loss API v2: declared needs, token-level fields, extra metrics, and the packed forward that serves them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import build_tiny_model
from test_train import conversational_rows, dpo_config, make_trainer

DOC = Path(__file__).resolve().parent.parent / "docs" / "losses.md"


def test_a_loss_declaring_unknown_needs_or_modifiers_is_refused_at_registration():
    from dpo_plugins.specs import Loss

    with pytest.raises(ValueError, match=r"Loss 'x': unknown needs \['logits'\] \(known: log_sum_sq_probs, tokens\)"):
        Loss(name="x", fn=len, needs={"logits"})
    with pytest.raises(ValueError, match=r"unknown modifiers \['wpo'\]"):
        Loss(name="x", fn=len, modifiers={"wpo"})


def test_sigmoid_asks_the_forward_for_nothing_token_level(tokenizer, tmp_path):
    """So the default loss runs the same forward as before the token-level API existed."""
    from dpo_plugins.adapters.trl import PluginDPOTrainer

    trainer = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "x", loss_type=["sigmoid", "ipo"]))
    assert trainer.forward_needs == frozenset()
    wpo = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "y", use_weighting=True))
    assert wpo.forward_needs == {"tokens", "log_sum_sq_probs"}


def test_the_documented_token_level_loss_trains_and_logs_its_metric(tokenizer, tmp_path, registered):
    """docs/losses.md's "Writing a loss" example, run as written: its metric lands in the log history."""
    import torch

    code = re.search(r"## Writing a loss.*?```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation

    class DocPlugin:
        register_losses = staticmethod(namespace["register_losses"])

    registered(DocPlugin(), "doc-loss-plugin")
    from dpo_plugins.adapters.trl import PluginDPOTrainer

    trainer = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "doc", loss_type=["dpo_nll"], max_steps=2,
                                                                   per_device_train_batch_size=8, learning_rate=0.0))
    trainer.train()
    logged = [entry["dpo_nll/nll"] for entry in trainer.state.log_history if "loss" in entry]
    # Independently: per-completion mean NLL of the chosen completions under the (unchanged) model.
    from test_train import independent_logps

    chosen, _, chosen_n, _ = independent_logps(build_tiny_model(tokenizer), tokenizer, conversational_rows())
    expected = (-chosen / chosen_n).mean().item()
    assert logged == pytest.approx([expected, expected], abs=1e-5)
    assert isinstance(torch.tensor(logged), torch.Tensor)


def test_packed_token_logps_and_wpo_statistic_equal_a_full_logits_computation(tokenizer):
    """Per-token log-probs and log sum_v p^2 from the chunked packed head == full-vocabulary softmax, row by row."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from dpo_plugins.adapters.packing import collated_pair_logps

    model = build_tiny_model(tokenizer)
    args = DPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=4, use_cpu=True, report_to=[], max_length=128)
    trainer = DPOTrainer(model=model, ref_model=build_tiny_model(tokenizer), args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(conversational_rows()))
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        sums, _, tokens = collated_pair_logps(model, batch, per_token=True, log_sum_sq=True, logit_chunk=7)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    log_probs = logits.log_softmax(-1)
    targets = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].bool()
    for row in range(len(targets)):
        expected_logps = log_probs[row].gather(1, targets[row][:, None])[:, 0][mask[row]]
        expected_sq = (2 * log_probs[row]).logsumexp(-1)[mask[row]]
        got = tokens.mask[row]
        torch.testing.assert_close(tokens.logps[row][got].double(), expected_logps, atol=1e-5, rtol=0)
        torch.testing.assert_close(tokens.log_sum_sq_probs[row][got].double(), expected_sq, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.sums()[: len(targets) // 2], sums.chosen_logps)


def test_the_commands_that_used_to_fail_run_as_a_trl_user_types_them(tmp_path, tiny_model_dir):
    """issue 13's reproduction: sft in a combination, WPO, LD-DPO and an f-divergence from the command line,
    and a TRL YAML with ``loss_type:`` / ``loss_weights:`` unchanged. Each writes trainer_state.json with
    TRL's metrics (and a loss's own, for cpo)."""
    import json
    import textwrap

    from test_train_cli import FAST, log_history

    from dpo_plugins import cli

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in conversational_rows()))
    config = tmp_path / "trl.yaml"
    config.write_text(textwrap.dedent("""\
        loss_type: [sigmoid, bco_pair, sft]
        loss_weights: [0.8, 0.2, 1.0]
        beta: 0.2
    """))
    runs = {
        "sft": ["--loss", "sigmoid", "sft", "--loss-weights", "0.8", "0.2"],
        "wpo": ["--loss-type", "apo_zero", "--use-weighting", "true"],
        "ld": ["--loss", "ipo", "--ld-alpha", "0.5"],
        "js": ["--loss", "sigmoid", "--f-divergence-type", "js_divergence"],
        "yaml": ["--config", str(config)],
        "cpo": ["--loss", "cpo"],
    }
    for name, flags in runs.items():
        out = tmp_path / name
        assert cli.main(["train", "--model", str(tiny_model_dir), "--data", str(pairs), "--output-dir", str(out),
                         *flags, *FAST]) == 0, name
        logged = [entry for entry in log_history(out) if "loss" in entry]
        assert len(logged) == 1 and "rewards/margins" in logged[0], name
    assert "cpo/nll_loss" in [e for e in log_history(tmp_path / "cpo") if "loss" in e][0]
