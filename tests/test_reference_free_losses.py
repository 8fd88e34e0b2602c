"""The reference-free family against TRL's experimental CPOTrainer / ORPOTrainer on identical batches.

A real CPOTrainer / ORPOTrainer (tiny model, real tokenizer) tokenizes and
collates a batch and computes its own loss; the plugin loss then sees the
same tokens through a :class:`LossBatch` built from one plain forward of the
same model, and must give the same number within 1e-5. Then training: 3 SGD
steps of stock CPOTrainer / ORPOTrainer against :class:`PluginDPOTrainer`
(its default, packed forward) on text pairs both tokenize alike, per-step
losses and gradients within 1e-5 (AlphaPO: 5e-5, see ``TOLERANCE``).
"""

from __future__ import annotations

import pytest

from conftest import build_tiny_model
from test_train import PAIRS, assert_same_steps, conversational_rows, dpo_config, make_trainer, step_losses


def trl_batch_and_loss(trainer_class, config_class, tokenizer, tmp_path, **settings):
    """``(LossBatch of the first batch, TRL's loss on it, TRL's metrics)`` for a fresh tiny model."""
    import torch
    from datasets import Dataset

    from dpo_plugins.specs import LossBatch

    args = config_class(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, use_cpu=True, report_to=[],
                        max_length=128, bf16=False, **settings)
    trainer = trainer_class(model=build_tiny_model(tokenizer), args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_list(conversational_rows()))
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()  # no dropout either way; eval keeps TRL's metrics prefix-free
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(model, batch)
        padding = getattr(trainer, "padding_value", getattr(trainer, "pad_token_id", None))
        joined = trainer.concatenated_inputs(batch, padding_value=padding)
        logits = model(joined["concatenated_input_ids"], attention_mask=joined["concatenated_attention_mask"]).logits
    labels = joined["concatenated_labels"][:, 1:]
    mask = labels != -100
    token_logps = logits[:, :-1].log_softmax(-1).gather(2, labels.clamp(min=0)[..., None])[..., 0] * mask
    sums, lengths = token_logps.sum(1), mask.sum(1).float()
    half = len(sums) // 2
    ours = LossBatch(sums[:half], sums[half:], None, None, lengths[:half], lengths[half:],
                     chosen_token_logps=token_logps[:half], rejected_token_logps=token_logps[half:],
                     chosen_token_mask=mask[:half], rejected_token_mask=mask[half:])
    return ours, float(loss), metrics


def plugin_loss(name, batch, beta, **params):
    from dpo_plugins.plugins import get_loss

    out = get_loss(name).fn(batch, beta, **params)
    return out if isinstance(out, tuple) else (out, {})


@pytest.mark.parametrize("loss_type, cpo_alpha, label_smoothing", [("sigmoid", 1.0, 0.0), ("sigmoid", 0.5, 0.1),
                                                                    ("sigmoid", 0.0, 0.0)])
def test_cpo_equals_cpotrainer(tokenizer, tmp_path, loss_type, cpo_alpha, label_smoothing):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    batch, expected, _ = trl_batch_and_loss(CPOTrainer, CPOConfig, tokenizer, tmp_path, beta=0.3, loss_type=loss_type,
                                            cpo_alpha=cpo_alpha, label_smoothing=label_smoothing)
    per_pair, metrics = plugin_loss("cpo", batch, 0.3, cpo_alpha=cpo_alpha, label_smoothing=label_smoothing)
    assert per_pair.mean().item() == pytest.approx(expected, abs=1e-5, rel=1e-5)
    assert ("nll_loss" in metrics) == bool(cpo_alpha)


def test_simpo_equals_cpotrainer_simpo_without_nll(tokenizer, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    batch, expected, _ = trl_batch_and_loss(CPOTrainer, CPOConfig, tokenizer, tmp_path, beta=2.0, loss_type="simpo",
                                            cpo_alpha=0.0, simpo_gamma=0.7)
    per_pair, _ = plugin_loss("simpo", batch, 2.0, gamma=0.7)
    assert per_pair.mean().item() == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_alphapo_equals_cpotrainer_alphapo(tokenizer, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    batch, expected, _ = trl_batch_and_loss(CPOTrainer, CPOConfig, tokenizer, tmp_path, beta=2.0, loss_type="alphapo",
                                            alpha=0.25, simpo_gamma=0.5)
    per_pair, _ = plugin_loss("alphapo", batch, 2.0, alpha=0.25, gamma=0.5)
    assert per_pair.mean().item() == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_orpo_odds_ratio_term_equals_orpotrainer(tokenizer, tmp_path):
    """TRL's ORPO loss minus its NLL (over prompt + completion) == ours minus ours (over the completion)."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    batch, expected, metrics = trl_batch_and_loss(ORPOTrainer, ORPOConfig, tokenizer, tmp_path, beta=0.2)
    per_pair, ours = plugin_loss("orpo", batch, 0.2)
    odds_term = per_pair.mean().item() - ours["nll_loss"].item()
    assert odds_term == pytest.approx(expected - float(metrics["eval_nll_loss"] if "eval_nll_loss" in metrics
                                                       else metrics["nll_loss"]), abs=1e-5)
    for key in ("log_odds_ratio", "log_odds_chosen"):
        trl_value = metrics.get(f"eval_{key}", metrics.get(key))
        assert ours[key].item() == pytest.approx(float(trl_value), abs=1e-5)
    # The NLL of the chosen completions alone: CPO's cross-entropy (cpo_alpha), i.e. TRL's sft.
    completion_nll = -batch.chosen_token_logps[batch.chosen_token_mask].mean().item()
    assert ours["nll_loss"].item() == pytest.approx(completion_nll, abs=1e-6)


@pytest.mark.parametrize("name", ["cpo", "orpo"])
def test_reference_free_family_trains_without_a_reference_and_logs_its_metrics(tokenizer, tmp_path, name):
    from dpo_plugins.adapters.trl import PluginDPOTrainer

    trainer = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, name, loss_type=[name], max_steps=2),
                           with_reference=False)
    assert trainer.ref_model is None and not trainer.needs_reference
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(step_losses(trainer)) == 2 and all(f"{name}/nll_loss" in entry for entry in logs)


# -- 3 training steps against stock TRL -----------------------------------------------------------

# (TRL trainer, its config's settings, our loss, its --loss-param values, DPOConfig settings); beta on each
# method's own scale.
TRAINING_CASES = {
    "cpo": ("cpo", dict(loss_type="sigmoid", cpo_alpha=0.5, label_smoothing=0.1, beta=0.5),
            "cpo", {"cpo_alpha": 0.5}, dict(label_smoothing=0.1, beta=0.5)),
    "simpo": ("cpo", dict(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=0.7, beta=2.0),
              "simpo", {"gamma": 0.7}, dict(beta=2.0)),
    "alphapo": ("cpo", dict(loss_type="alphapo", alpha=0.25, simpo_gamma=0.5, beta=2.0),
                "alphapo", {"alpha": 0.25, "gamma": 0.5}, dict(beta=2.0)),
    "orpo": ("orpo", dict(beta=0.2), "orpo", {}, dict(beta=0.2)),
}
# AlphaPO's reward (1 - p^-alpha) / alpha of the per-token mean probability p has slope beta * p^-alpha in
# log p: at the tiny random model's log p of about -10.8 (a 49k vocabulary) that is 2 * e^2.7 = 30, so the
# float32 rounding of the two forwards' sums (packed here, TRL's padded batch there) reaches the losses 30
# times larger. Measured: per-step losses 8.8e-6 (2.4e-5 at lr 0.05), gradients 4.6e-6, grad_norm 2.5e-6
# relative. The others: losses 1.9e-6, gradients 1.5e-7, grad_norm 5.4e-7 relative (1e-5).
TOLERANCE = {"alphapo": 5e-5}
# The loss's own metrics, logged by TRL as KEY and here as LOSS/KEY.
SHARED_METRICS = ("nll_loss", "log_odds_ratio", "log_odds_chosen")


def text_rows(one_token_prompt=False):
    """The pairs as text that CPOTrainer and DPOTrainer tokenize to the same ids: BOS and EOS written out
    (CPO adds them as ids when missing, DPOTrainer does not). ``one_token_prompt``: the prompt is BOS
    alone and the question opens both completions."""
    if one_token_prompt:
        return [{"prompt": "<|im_start|>", "chosen": f"{q}\n{c}<|im_end|>", "rejected": f"{q}\n{r}<|im_end|>"}
                for q, c, r in PAIRS]
    return [{"prompt": f"<|im_start|>{q}\n", "chosen": f"{c}<|im_end|>", "rejected": f"{r}<|im_end|>"}
            for q, c, r in PAIRS]


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_three_steps_train_exactly_like_stock_cpo_and_orpo_trainers(tokenizer, tmp_path, case):
    """Per-step losses, grad_norm, per-parameter gradients, final weights and the loss's own metrics.

    ORPO runs on a one-token prompt: TRL's ORPO takes its NLL over prompt and completion, ours (the paper's
    L_SFT) over the completion; with a prompt of one token (never a label) the two NLLs are the same tokens."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    trl_kind, trl_settings, loss, loss_params, dpo_settings = TRAINING_CASES[case]
    rows = text_rows(one_token_prompt=trl_kind == "orpo")
    trainer_class, config_class = {"cpo": (CPOTrainer, CPOConfig), "orpo": (ORPOTrainer, ORPOConfig)}[trl_kind]
    common = dict(per_device_train_batch_size=2, max_steps=3, logging_steps=1, save_strategy="no", report_to=[],
                  use_cpu=True, bf16=False, seed=0, max_length=128, disable_tqdm=True, gradient_checkpointing=False,
                  optim="sgd", learning_rate=0.3)
    stock = make_trainer(trainer_class, tokenizer, config_class(output_dir=str(tmp_path / "stock"), **common,
                                                                **trl_settings), with_reference=False, rows=rows)
    ours = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "ours", loss_type=[loss], **common,
                                                                **dpo_settings),
                        with_reference=False, rows=rows, loss_params=loss_params)
    tolerance = TOLERANCE.get(case, 1e-5)
    stock_logs, our_logs = assert_same_steps(stock, ours, tolerance=tolerance)
    for stock_entry, our_entry in zip(stock_logs, our_logs):
        assert our_entry["grad_norm"] == pytest.approx(stock_entry["grad_norm"], abs=tolerance, rel=tolerance)
        shared = [key for key in SHARED_METRICS if f"{loss}/{key}" in our_entry]
        assert set(shared) <= stock_entry.keys() and bool(shared) == (loss in ("cpo", "orpo"))
        for key in shared:
            assert our_entry[f"{loss}/{key}"] == pytest.approx(stock_entry[key], abs=tolerance, rel=tolerance), key
