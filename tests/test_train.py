"""Loss plugins inside TRL training: parity with stock TRL, weights, params, health checks."""

from __future__ import annotations

import pytest

from conftest import build_tiny_model
from dpo_plugins import Loss, hookimpl
from dpo_plugins.errors import DpoPluginsError

PAIRS = [
    ("What is the capital of France?", "Paris.", "The capital of France is Berlin, a city in Germany."),
    ("Name a primary colour.", "Red is a primary colour.", "Green."),
    ("How many legs does a spider have?", "Eight.", "Spiders have six legs like all insects do."),
    ("Say hello in Spanish.", "Hola.", "Bonjour! That is how you greet someone."),
    ("What is 2 + 2?", "2 + 2 = 4.", "5"),
    ("Which planet is called the red planet?", "Mars, because of its iron oxide dust.", "Venus."),
    ("Give me a synonym for happy.", "Joyful.", "Sad is a word that means happy."),
    ("What do bees make?", "Honey and beeswax.", "Milk."),
]


def conversational_rows():
    return [
        {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        for prompt, chosen, rejected in PAIRS
    ]


def dpo_config(tmp_path, name, **overrides):
    from trl import DPOConfig

    settings = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        max_length=128,
        disable_tqdm=True,
        gradient_checkpointing=False,  # TRL's default (True) is kept in the sigmoid parity case
    )
    settings.update(overrides)
    return DPOConfig(**settings)


def make_trainer(trainer_class, tokenizer, args, with_reference=True, rows=None, **kwargs):
    """``trainer_class`` on a fresh tiny model (seed 0) and ``rows`` (default: the conversational pairs)."""
    from datasets import Dataset

    if with_reference:
        kwargs["ref_model"] = build_tiny_model(tokenizer)
    return trainer_class(
        model=build_tiny_model(tokenizer),
        args=args,
        train_dataset=Dataset.from_list(rows or conversational_rows()),
        processing_class=tokenizer,
        **kwargs,
    )


def gradient_recorder(keep=lambda name: True):
    """A callback keeping the gradients of the parameters ``keep`` selects, at each optimizer step."""
    from transformers import TrainerCallback

    class GradientRecorder(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.steps.append(
                {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None and keep(name)}
            )

    return GradientRecorder()


def step_losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def train_recording(trainer, keep=lambda name: True):
    recorder = gradient_recorder(keep)
    trainer.add_callback(recorder)
    trainer.train()
    return recorder.steps


def assert_same_steps(stock, ours, keep=lambda name: True, tolerance=1e-5):
    """Train both: per-step losses and per-step gradients agree within ``tolerance``, final weights within 1e-4.

    Returns the two runs' logged steps (stock's, ours)."""
    import torch

    stock_grads, our_grads = train_recording(stock, keep), train_recording(ours, keep)
    assert len(step_losses(stock)) == len(stock_grads) == stock.args.max_steps >= 3
    assert step_losses(ours) == pytest.approx(step_losses(stock), abs=tolerance, rel=0)
    assert len(set(round(loss, 4) for loss in step_losses(ours))) > 1, "the model did not move"
    assert len(our_grads) == len(stock_grads)
    for stock_step, our_step in zip(stock_grads, our_grads):
        assert our_step.keys() == stock_step.keys() and stock_step
        for name, grad in stock_step.items():
            torch.testing.assert_close(our_step[name], grad, rtol=0, atol=tolerance, msg=name)
    # The packed forward (the default) sums in another order: gradients agree to ~1e-6, and Adam's
    # g / sqrt(v) amplifies that on near-zero gradients, so the weights after 3 steps at lr 5e-3
    # agree to ~3e-5 (bitwise with packed_forward=False).
    for (name, ours_p), (_, stock_p) in zip(ours.model.named_parameters(), stock.model.named_parameters()):
        torch.testing.assert_close(ours_p, stock_p, rtol=0, atol=1e-4, msg=name)
    return ([entry for entry in run.state.log_history if "loss" in entry] for run in (stock, ours))


def assert_same_training(stock, ours, keep=lambda name: True, ignore_metrics=(), tolerance=1e-5):
    """Per-step losses, per-step gradients, final weights and TRL's metrics agree (``tolerance``: 1e-5).

    ``ignore_metrics``: logged keys left out of the comparison (e.g. rewards/* of a run without reference)."""
    stock_logs, our_logs = assert_same_steps(stock, ours, keep, tolerance)
    for stock_entry, our_entry in zip(stock_logs, our_logs):
        assert our_entry.keys() == stock_entry.keys()
        for key, value in stock_entry.items():
            if key in ignore_metrics:
                continue
            # float32 sums in another order (the packed forward): ``tolerance`` absolute or relative
            assert our_entry[key] == pytest.approx(value, abs=tolerance, rel=tolerance), key


@pytest.mark.parametrize(
    "loss_type, overrides",
    [
        ("sigmoid", {"gradient_checkpointing": True}),
        ("ipo", {"beta": 0.5}),
        ("hinge", {}),
        ("robust", {"label_smoothing": 0.2}),
    ],
)
def test_builtin_losses_train_exactly_like_trl(tokenizer, tmp_path, loss_type, overrides):
    from trl import DPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    stock = make_trainer(DPOTrainer, tokenizer, dpo_config(tmp_path, "stock", loss_type=[loss_type], **overrides))
    ours = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "ours", loss_type=[loss_type], **overrides))
    assert [term.name for term in ours.loss_terms] == [loss_type]
    assert_same_training(stock, ours)


def test_a_weighted_combination_equals_trls(tokenizer, tmp_path):
    from trl import DPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    settings = dict(loss_type=["sigmoid", "ipo"], loss_weights=[0.8, 0.2], max_steps=3)
    stock = make_trainer(DPOTrainer, tokenizer, dpo_config(tmp_path, "stock", **settings))
    ours = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "ours", **settings))
    assert [(term.name, term.weight) for term in ours.loss_terms] == [("sigmoid", 0.8), ("ipo", 0.2)]
    assert_same_training(stock, ours)


def scaled_sigmoid(batch, beta, scale=1.0, **params):
    import torch.nn.functional as F

    margin = (batch.chosen_logps - batch.ref_chosen_logps) - (batch.rejected_logps - batch.ref_rejected_logps)
    return -scale * F.logsigmoid(beta * margin)


class ScaledSigmoidPlugin:
    @hookimpl
    def register_losses(self):
        yield Loss(name="scaled_sigmoid", fn=scaled_sigmoid, params={"scale": 1.0})


def test_a_third_party_loss_trains_with_its_parameter(tokenizer, tmp_path, registered):
    """A loss registered from this test module, with --loss-param scale=3: 3x TRL's sigmoid, step by step."""
    from trl import DPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    registered(ScaledSigmoidPlugin(), "scaled-sigmoid-plugin")
    # Plain SGD: the update scales with the loss, so both runs follow the same path only if scale was applied.
    stock = make_trainer(DPOTrainer, tokenizer, dpo_config(tmp_path, "stock", optim="sgd", learning_rate=0.3,
                                                           loss_type=["sigmoid"], max_grad_norm=0))
    ours = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "ours", optim="sgd", learning_rate=0.1,
                                                                loss_type=["scaled_sigmoid"], max_grad_norm=0),
                        loss_params={"scale": "3"})
    assert ours.loss_terms[0].params == {"scale": 3.0}
    stock.train()
    ours.train()
    assert step_losses(ours) == pytest.approx([3 * loss for loss in step_losses(stock)], abs=3e-5, rel=0)


def hh_rows(count):
    """The shortest real HH-RLHF pairs (transcripts: TRL extracts the shared prompt)."""
    import gzip
    import json
    from pathlib import Path

    import dpo_plugins

    path = Path(dpo_plugins.__file__).parent / "data" / "hh-rlhf" / "harmless-base-test-first400.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return sorted(rows, key=lambda row: len(row["chosen"]) + len(row["rejected"]))[:count]


@pytest.mark.slow
@pytest.mark.parametrize("loss_type, beta", [("sigmoid", 0.1), ("ipo", 0.5)])
def test_smollm2_on_hh_pairs_trains_exactly_like_trl(smollm2_dir, tokenizer, tmp_path, loss_type, beta):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    def trainer(trainer_class, name):
        return trainer_class(
            model=AutoModelForCausalLM.from_pretrained(smollm2_dir),
            ref_model=AutoModelForCausalLM.from_pretrained(smollm2_dir),
            args=dpo_config(tmp_path, name, loss_type=[loss_type], beta=beta, learning_rate=1e-5, max_length=256,
                            per_device_train_batch_size=1),
            train_dataset=Dataset.from_list(hh_rows(3)),
            processing_class=tokenizer,
        )

    # Gradients of three tensors per step (all 135M would need GBs); losses and final weights cover the rest.
    keep = lambda name: name in {"model.embed_tokens.weight", "model.layers.15.self_attn.q_proj.weight",
                                 "model.norm.weight"}  # noqa: E731
    # IPO's per-token average of SmolLM2's ~-100 summed log-probs, squared: the packed float32 sums and the
    # float64 cached reference against TRL's two float32 rows differ by rounding up to 1.4e-5 in the loss and
    # 1.5e-5 in rewards/margins (measured with transformers 5.25 / torch 2.13; the same on 0f7b596), so 5e-5.
    tolerance = 5e-5 if loss_type == "ipo" else 1e-5
    assert_same_training(trainer(DPOTrainer, "stock"), trainer(PluginDPOTrainer, "ours"), keep, tolerance=tolerance)


# -- reference-free losses -------------------------------------------------------


def independent_logps(model, tokenizer, rows):
    """Summed completion log-probs with a plain forward and log_softmax (no TRL code)."""
    import torch

    chosen, rejected, chosen_n, rejected_n = [], [], [], []
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        for key, sums, counts in (("chosen", chosen, chosen_n), ("rejected", rejected, rejected_n)):
            full = tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            assert ids[: len(prompt_ids)] == prompt_ids
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :-1].float()
            token_logps = logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
            sums.append(token_logps[len(prompt_ids) - 1:].sum())
            counts.append(len(ids) - len(prompt_ids))
    return torch.stack(chosen), torch.stack(rejected), torch.tensor(chosen_n, dtype=torch.float32), \
        torch.tensor(rejected_n, dtype=torch.float32)


def test_simpo_trains_without_any_reference_model(tokenizer, tmp_path):
    """One step over all pairs: the logged loss is SimPO's formula on independently computed log-probs."""
    import torch.nn.functional as F

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    args = dpo_config(tmp_path, "simpo", loss_type=["simpo"], beta=2.0, max_steps=1, per_device_train_batch_size=8)
    reference_copy = build_tiny_model(tokenizer)
    # No ref_model and an in-memory policy: if TRL tried to load a reference it would fail (no path).
    trainer = make_trainer(PluginDPOTrainer, tokenizer, args, with_reference=False, loss_params={"gamma": 0.3})
    assert trainer.ref_model is None and not trainer.precompute_ref_logps and not args.precompute_ref_log_probs
    assert "ref_chosen_logps" not in trainer.train_dataset.column_names
    trainer.train()
    chosen, rejected, chosen_n, rejected_n = independent_logps(reference_copy, tokenizer, conversational_rows())
    expected = -F.logsigmoid(2.0 * (chosen / chosen_n - rejected / rejected_n) - 0.3).mean().item()
    assert step_losses(trainer) == pytest.approx([expected], abs=1e-5)
    assert trainer.state.log_history[0]["logps/chosen"] == pytest.approx(chosen.mean().item(), abs=1e-4)


def test_a_reference_free_loss_refuses_a_reference(tokenizer, tmp_path):
    from dpo_plugins.adapters.trl import PluginDPOTrainer

    with pytest.raises(DpoPluginsError, match="a reference model was given, but the losses \\(simpo\\) use none"):
        make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "x", loss_type=["simpo"]))


# -- resolving losses and options ---------------------------------------------------


def test_loss_params_are_typed_and_checked():
    from dpo_plugins.adapters.loss_selection import resolve_losses
    from dpo_plugins.params import parse_key_values

    terms = resolve_losses(["robust", "simpo"], [0.5, 2], parse_key_values(["label_smoothing=0.25", "simpo.gamma=1"], "--loss-param"))
    assert [(t.name, t.weight, t.params, t.needs_reference) for t in terms] == [
        ("robust", 0.5, {"label_smoothing": 0.25}, True),
        ("simpo", 2.0, {"gamma": 1.0}, False),
    ]
    with pytest.raises(DpoPluginsError) as caught:
        resolve_losses(["sigmoid", "robust"], None, {"gama": "1", "robust.label_smoothing": "lots"})
    assert str(caught.value).splitlines() == [
        "loss parameter 'gama' is not declared by the selected losses (sigmoid: none; robust: label_smoothing)",
        "loss parameter 'robust.label_smoothing' of robust: expected a float, got 'lots'",
    ]
    with pytest.raises(DpoPluginsError, match="only affects losses that declare 'label_smoothing'"):
        resolve_losses(["sigmoid"], None, None, {"label_smoothing": 0.1})
    with pytest.raises(DpoPluginsError, match="--loss-weights has 1 values for 2 losses"):
        resolve_losses(["sigmoid", "ipo"], [1.0])
    with pytest.raises(DpoPluginsError, match="unknown loss 'sigmiod'; available: .*hinge, ipo, .*robust, sft, sigmoid, sigmoid_norm, simpo"):
        resolve_losses(["sigmiod"])
    with pytest.raises(DpoPluginsError, match="expected KEY=VALUE"):
        parse_key_values(["gamma"], "--loss-param", "KEY=VALUE (or LOSS.KEY=VALUE)")


def test_other_trl_versions_are_refused_by_name():
    from dpo_plugins.adapters.trl import check_trl_version

    check_trl_version("1.16.3")
    with pytest.raises(DpoPluginsError, match=r"trl >=1.16,<1.17, but trl 1.17.0 is installed: pip install 'trl>=1.16,<1.17'"):
        check_trl_version("1.17.0")


def test_modifiers_a_loss_has_not_opted_into_are_errors(tokenizer, tmp_path, registered):
    """TRL's own restrictions (f-divergences only on delta-score losses, no WPO on the sorting aot), and a
    third-party loss that declares no modifiers refuses them all, naming the losses, before any training."""
    from dpo_plugins.adapters.trl import PluginDPOTrainer

    args = dpo_config(tmp_path, "x", loss_type=["aot", "bco_pair"], f_divergence_type="js_divergence",
                      use_weighting=True)
    with pytest.raises(DpoPluginsError) as caught:
        make_trainer(PluginDPOTrainer, tokenizer, args)
    assert str(caught.value).splitlines() == [
        "unsupported option combination:",
        "f_divergence_type='js_divergence': not valid with the loss(es) aot, bco_pair "
        "(a loss opts in with Loss(modifiers={'f_divergence'}))",
        "use_weighting=True: not valid with the loss(es) aot (a loss opts in with Loss(modifiers={'weighting'}))",
    ]
    registered(ScaledSigmoidPlugin(), "scaled-sigmoid-plugin")
    with pytest.raises(DpoPluginsError, match=r"ld_alpha=0.5: not valid with the loss\(es\) scaled_sigmoid "):
        make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "y", loss_type=["sigmoid", "scaled_sigmoid"],
                                                             ld_alpha=0.5))


# -- health checks ---------------------------------------------------------------------


def test_a_reference_that_is_not_the_initial_policy_fails_at_step_0(tokenizer, tmp_path):
    from datasets import Dataset

    from dpo_plugins.adapters.trl import PluginDPOTrainer
    from dpo_plugins.errors import HealthCheckError

    trainer = PluginDPOTrainer(
        model=build_tiny_model(tokenizer),
        ref_model=build_tiny_model(tokenizer, seed=1),
        args=dpo_config(tmp_path, "x"),
        train_dataset=Dataset.from_list(conversational_rows()),
        processing_class=tokenizer,
    )
    with pytest.raises(HealthCheckError, match="step 0: policy and reference log-probs differ .*--ref-model"):
        trainer.train()
    assert trainer.state.global_step == 0


def detached_loss(batch, beta, **params):
    return (batch.chosen_logps - batch.rejected_logps) * 0.0


class DetachedPlugin:
    @hookimpl
    def register_losses(self):
        yield Loss(name="zero_gradient", fn=detached_loss)


def test_parameters_without_gradient_fail_at_step_0(tokenizer, tmp_path, registered):
    from dpo_plugins.adapters.trl import PluginDPOTrainer
    from dpo_plugins.errors import HealthCheckError

    registered(DetachedPlugin(), "zero-gradient-plugin")
    trainer = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "x", loss_type=["zero_gradient"]))
    with pytest.raises(HealthCheckError, match="none of the \\d+ trainable parameters received a non-zero gradient"):
        trainer.train()


def test_a_loss_stuck_at_ln2_is_explained(tokenizer, tmp_path, caplog):
    from dpo_plugins.adapters.trl import PluginDPOTrainer

    trainer = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "x", learning_rate=0.0))
    with caplog.at_level("INFO", logger="dpo_plugins.train"):
        trainer.train()
    messages = [record.getMessage() for record in caplog.records]
    assert any("= ln 2 at step 1, as expected" in m for m in messages)
    assert any("loss has stayed at ln 2 = 0.6931 for 3 logs (step 3)" in m and "learning rate" in m for m in messages)
