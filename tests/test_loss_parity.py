"""Every TRL 1.16 DPO loss type and modifier as a plugin, step for step against stock ``DPOTrainer``.

Each case trains a tiny fp32 model for 3 SGD steps with stock TRL and with
:class:`PluginDPOTrainer`, and compares per-step losses, logged metrics,
per-parameter gradients and final weights (``assert_same_training``; within
:func:`tolerance`: 1e-5 but where measured otherwise) on the forwards of
:data:`PATHS`, and again under AdamW (TRL's default optimizer) on the
default path: ``cached`` (the ``dpo train`` default:
prefix-shared packed forward, reference log-probs precomputed through the
on-disk cache), ``trl`` (``packed_forward=False``: TRL's two-row forward and
per-step reference; what ``--trl-forward`` selects) and ``packed`` (packed
forward, per-step packed reference: for the LD-DPO cases, whose reference
side differs there, and for the steep losses of :data:`STEEP`, which run on
all three).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TWO_PROCESSES
from test_train import assert_same_training, conversational_rows, dpo_config, make_trainer

# (loss_type, loss_weights, DPOConfig overrides); beta 0.5 moves the tiny model visibly in 3 steps.
LOSS_CASES = [
    (["sigmoid"], None, {}),
    (["hinge"], None, {}),
    (["ipo"], None, {}),
    (["exo_pair"], None, {"label_smoothing": 1e-3}),
    (["nca_pair"], None, {}),
    (["robust"], None, {}),  # TRL's default label_smoothing (0.0)
    (["robust"], None, {"label_smoothing": 0.2}),
    (["bco_pair"], None, {}),
    (["sppo_hard"], None, {}),
    (["aot"], None, {"label_smoothing": 0.1, "per_device_train_batch_size": 4}),
    (["aot_unpaired"], None, {"per_device_train_batch_size": 4}),
    (["apo_zero"], None, {}),
    (["apo_down"], None, {}),
    (["discopop"], None, {}),  # TRL's default discopop_tau (0.05): see tolerance()
    (["discopop"], None, {"discopop_tau": 1.0}),
    (["sft"], None, {}),
    (["sigmoid_norm"], None, {}),
    # weighted combinations: TRL's rpo_alpha replacement, and the MPO recipe
    (["sigmoid", "sft"], [0.8, 0.2], {}),
    (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], {}),
    # modifiers
    (["apo_zero"], None, {"use_weighting": True}),
    # (TRL 1.16 itself fails on sft under use_weighting: it scales sft's expanded scalar in place.)
    (["sigmoid", "bco_pair"], [0.8, 0.2], {"use_weighting": True}),
    (["ipo"], None, {"ld_alpha": 0.5}),
    (["sigmoid", "sft"], [1.0, 0.5], {"ld_alpha": 0.3}),
    (["sigmoid"], None, {"f_divergence_type": "forward_kl"}),
    (["sigmoid"], None, {"f_divergence_type": "js_divergence"}),
    (["sigmoid"], None, {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3}),
    (["hinge", "sigmoid_norm"], [1.0, 0.5], {"f_divergence_type": "js_divergence"}),
]
# Plain SGD: every update is linear in the gradient, so the comparison is of what the trainer computes
# (gradients are compared at each step). Then AdamW, as users train.
SGD = {"optim": "sgd", "learning_rate": 0.3}
# AdamW with TRL's default optimizer settings (DPOConfig: adamw_torch_fused, betas (0.9, 0.999), eps 1e-8, no
# weight decay, linear decay, max_grad_norm 1.0); only the learning rate is raised from TRL's 1e-6 to 1e-3, so
# that 3 steps move the tiny model (at 1e-6 the loss moves by ~3e-5, no more than the tolerance).
ADAMW = {"optim": "adamw_torch_fused", "learning_rate": 1e-3}
PATHS = {
    # the `dpo train` default: packed forward, reference log-probs precomputed once through the on-disk cache
    "cached": dict(packed_forward=True, precompute_ref_log_probs=True),
    # TRL's two-row forward and per-step reference forward
    "trl": dict(packed_forward=False, precompute_ref_log_probs=False),
    # packed forward for the policy and a per-step packed reference forward
    "packed": dict(packed_forward=True, precompute_ref_log_probs=False),
}
# The packed per-step reference path for the cases whose reference side differs there (LD-DPO's token split).
PACKED_CASES = [case for case in LOSS_CASES if "ld_alpha" in case[2]] + [(["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], {})]
REWARD_METRICS = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}


def case_id(case):
    names, weights, overrides = case
    label = "+".join(names)
    return label + "".join(f"-{k}={v}" for k, v in overrides.items() if k not in ("per_device_train_batch_size",))


# sppo_hard's squares and discopop's sigmoid(logits / tau) blend are steep at a zero margin; besides the
# default cached path they also run the packed forward with a per-step packed reference.
STEEP = {"sppo_hard", "discopop"}


def paths_for(case):
    return ["cached", "trl"] + (["packed"] if STEEP & set(case[0]) else [])


def tolerance(case, path, optimizer):
    """Losses, gradients and metrics agree within this; 1e-5 (float32 sums in another order) unless measured
    otherwise. The TRL path always gets 1e-5 (TRL's own computation: measured differences 1e-7 at most).

    On the packed paths the policy's sums run in another order (~1e-7), and the cached reference is float64
    where TRL's per-step one is float32 (step-1 log-ratios ~1e-7 instead of exactly 0). Three things amplify
    that by step 3 (step 1 agrees within 1e-7 on every path):

    * AdamW (1e-4): its update lr * m / (sqrt(v) + eps) normalises each coordinate, so rounding on a
      near-zero gradient becomes a step of up to lr. Measured over the matrix (cached and packed paths, lr 1e-3):
      per-step losses 2.8e-5 (sppo_hard), gradients 7.6e-6, grad_norm and metrics 1.1e-5 relative.
    * The steep losses of :data:`STEEP` under SGD (5e-5): sppo_hard's step-3 loss (~2) differs by 1.4e-5 on
      the packed path (3.3e-6 cached). So does sigmoid under forward_kl, whose score 1 - e^-u has slope e^-u,
      large once a log-ratio u has fallen: its step-3 grad_norm differs by 2.3e-5 (1.1e-5 relative) on the
      cached path (the same before issue 21; the gradients themselves within 1e-5).
    * discopop at its default tau 0.05 (5e-5 under SGD, 5e-4 under AdamW): the blend's slope at a zero margin
      is 1/(4 tau) = 5, twenty times tau 1's. Measured: per-step losses 1.5e-6, gradients 4.8e-6 (SGD) and
      1.8e-5 (AdamW), and the step-3 grad_norm (a norm over every parameter) 2.3e-5 (SGD) and 1.8e-4 (AdamW)
      relative.
    """
    if path == "trl":
        return 1e-5
    if optimizer is ADAMW:
        return 5e-4 if case[0] == ["discopop"] and "discopop_tau" not in case[2] else 1e-4
    return 5e-5 if STEEP & set(case[0]) or case[2].get("f_divergence_type") == "forward_kl" else 1e-5


@pytest.mark.parametrize(
    "case, path", [pytest.param(case, path, id=f"{case_id(case)}-{path}") for case in LOSS_CASES for path in paths_for(case)]
)
def test_every_trl_loss_and_modifier_trains_exactly_like_trl(tokenizer, tmp_path, case, path):
    check_case(tokenizer, tmp_path, case, path)


@pytest.mark.parametrize("case", PACKED_CASES, ids=case_id)
def test_the_packed_per_step_reference_trains_exactly_like_trl(tokenizer, tmp_path, case):
    check_case(tokenizer, tmp_path, case, "packed")


@pytest.mark.parametrize("case", LOSS_CASES, ids=case_id)
def test_every_trl_loss_and_modifier_trains_like_trl_under_adamw_on_the_default_path(tokenizer, tmp_path, case):
    """TRL's default optimizer on `dpo train`'s default (cached) path; tolerance() says how close, and why."""
    check_case(tokenizer, tmp_path, case, "cached", ADAMW)


def check_case(tokenizer, tmp_path, case, path, optimizer=SGD):
    from trl import DPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer

    names, weights, overrides = case
    settings = dict(loss_type=list(names), loss_weights=weights, beta=0.5, **optimizer)
    settings.update(overrides)
    stock = make_trainer(DPOTrainer, tokenizer, dpo_config(tmp_path, "stock", **settings))
    options = dict(PATHS[path])
    packed = options.pop("packed_forward")
    # sft alone reads no reference: ours loads none, so TRL's rewards/* (log-ratios) have no counterpart.
    reference_free = names == ["sft"]
    if reference_free:
        options["precompute_ref_log_probs"] = False
    ours = make_trainer(PluginDPOTrainer, tokenizer, dpo_config(tmp_path, "ours", **settings, **options),
                        with_reference=not reference_free, packed_forward=packed)
    assert [term.name for term in ours.loss_terms] == names
    ignore = set(REWARD_METRICS) if reference_free else set()
    if options.get("precompute_ref_log_probs"):
        # At step 1 the policy is the reference: TRL's log-ratios are exactly 0 (one computation twice), the
        # cached ones float32-vs-float64 rounding (~1e-7), so "chosen reward > rejected reward" counts noise.
        # The rewards themselves (and everything else) are still compared to 1e-5.
        ignore.add("rewards/accuracies")
    assert_same_training(stock, ours, ignore_metrics=ignore, tolerance=tolerance(case, path, optimizer))


@pytest.mark.slow
@pytest.mark.parametrize(
    "names, weights, overrides",
    [
        (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], {}),
        (["apo_zero"], None, {"use_weighting": True}),
        (["ipo"], None, {"ld_alpha": 0.5, "beta": 0.5}),
        (["sigmoid"], None, {"f_divergence_type": "js_divergence"}),
    ],
    ids=["mpo", "apo_zero-wpo", "ipo-ld", "sigmoid-js"],
)
def test_smollm2_on_hh_pairs_with_token_level_losses_and_modifiers(smollm2_dir, tokenizer, tmp_path, names, weights,
                                                                    overrides):
    """The real SmolLM2-135M on real HH pairs, default (cached, packed) path vs stock TRL: within 1e-3."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    from dpo_plugins.adapters.trl import PluginDPOTrainer
    from test_train import hh_rows, step_losses

    def trainer(trainer_class, name, **extra):
        settings = dict(loss_type=names, loss_weights=weights, learning_rate=1e-5, max_length=256,
                        per_device_train_batch_size=2, max_steps=2)
        settings.update(overrides)
        return trainer_class(
            model=AutoModelForCausalLM.from_pretrained(smollm2_dir),
            ref_model=AutoModelForCausalLM.from_pretrained(smollm2_dir),
            args=dpo_config(tmp_path, name, **settings, **extra),
            train_dataset=Dataset.from_list(hh_rows(4)),
            processing_class=tokenizer,
        )

    stock, ours = trainer(DPOTrainer, "stock"), trainer(PluginDPOTrainer, "ours", precompute_ref_log_probs=True)
    stock.train()
    ours.train()
    assert step_losses(ours) == pytest.approx(step_losses(stock), abs=1e-3, rel=0)
    for stock_entry, our_entry in zip(stock.state.log_history, ours.state.log_history):
        for key in ("logps/chosen", "logps/rejected", "rewards/margins"):
            if key in stock_entry:
                assert our_entry[key] == pytest.approx(stock_entry[key], abs=1e-3, rel=1e-4), key


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["sft", "aot", "aot_unpaired"])
def test_two_gloo_processes_train_exactly_like_stock_trl_under_two(tmp_path, tiny_model_dir, loss):
    """`dpo train` under `accelerate launch` (2 CPU processes, gloo) equals stock DPOTrainer under the same launch.

    TRL computes these losses within each process's share of the batch: ``sft`` is the mean NLL over that
    share's chosen tokens, ``aot``/``aot_unpaired`` sort that share's log-ratios; DDP then averages the
    two processes' gradients. So two processes of 2 pairs are not one process of 4 (docs/losses.md,
    "Several processes"): `dpo train` matches TRL there. For sft and aot_unpaired the single process is
    shown to differ, so this data does tell per-process from global semantics; for aot it cannot here:
    over 3 steps the tiny policy ranks the pairs' log-ratios as the reference does, so every sort
    pairs each log-ratio with its own reference and the per-process and global losses coincide.
    """
    common = cli_argv(tmp_path, tiny_model_dir, loss)
    runs = {
        "ours-two": [*TWO_PROCESSES, "-m", "dpo_plugins", "train", "--per-device-train-batch-size", "2"],
        "stock-two": [*TWO_PROCESSES, str(Path(__file__).parent / "stock_dpo_train.py"),
                      "--per-device-train-batch-size", "2"],
    }
    if loss != "aot":
        runs["ours-one"] = [sys.executable, "-m", "dpo_plugins", "train", "--per-device-train-batch-size", "4"]
    logs = {}
    for name, command in runs.items():
        result = subprocess.run([*command, *common, "--output-dir", str(tmp_path / name)], capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        logs[name] = logged_steps(tmp_path / name)
    ours, stock = logs["ours-two"], logs["stock-two"]
    assert len(ours) == len(stock) == 3 and len({round(e["loss"], 4) for e in ours}) == 3
    assert [e["loss"] for e in ours] == pytest.approx([e["loss"] for e in stock], abs=1e-4, rel=0)
    assert [e["grad_norm"] for e in ours] == pytest.approx([e["grad_norm"] for e in stock], abs=0, rel=1e-4)
    if "ours-one" in logs:
        # More than twice the tolerance: a global-batch version of the loss would fail the comparison above.
        assert max(abs(a["loss"] - b["loss"]) for a, b in zip(ours, logs["ours-one"])) > 2e-4


# -- TRL's loss fields (label_smoothing, discopop_tau) as a TRL config sets them -------------------------


def cli_argv(tmp_path, model_dir, loss, *extra, learning_rate="1e-2"):
    """`dpo train` flags for 3 logged steps of ``loss`` on the tiny pairs (without --output-dir)."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in conversational_rows()))
    return ["--model", str(model_dir), "--data", str(data), "--loss", loss, "--max-steps", "3",
            "--logging-steps", "1", "--learning-rate", learning_rate, "--beta", "0.5", "--save-strategy", "no",
            "--disable-tqdm", "true", "--seed", "3", "--gradient-checkpointing", "false", *extra]


def logged_steps(output_dir):
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


@pytest.mark.parametrize("extra", [[], ["--label-smoothing", "0"], ["--label-smoothing", "0.2"]],
                         ids=["trl-default", "explicit-0", "explicit-0.2"])
def test_dpo_train_robust_equals_stock_trl_on_the_same_flags(tmp_path, tiny_model_dir, extra):
    """`dpo train --loss robust` and stock DPOTrainer on the DPOConfig the same flags build: TRL's default
    label_smoothing (0.0, which makes robust the sigmoid loss) and an explicit value, 0 included, reach the loss."""
    from dpo_plugins import cli
    from stock_dpo_train import main as stock_dpo_train

    # AdamW (dpo train's default) at the learning rate of the AdamW matrix above, and its tolerance (see tolerance())
    common = cli_argv(tmp_path, tiny_model_dir, "robust", *extra, learning_rate="1e-3")
    assert cli.main(["train", *common, "--output-dir", str(tmp_path / "ours")]) == 0
    stock_dpo_train([*common, "--output-dir", str(tmp_path / "stock")])
    ours, stock = logged_steps(tmp_path / "ours"), logged_steps(tmp_path / "stock")
    assert len(ours) == len(stock) == 3 and len({round(e["loss"], 4) for e in ours}) == 3
    assert [e["loss"] for e in ours] == pytest.approx([e["loss"] for e in stock], abs=1e-4, rel=0)
    assert [e["grad_norm"] for e in ours] == pytest.approx([e["grad_norm"] for e in stock], abs=0, rel=1e-4)


def test_trl_loss_fields_reach_the_losses_whatever_their_value_and_explicit_params_win(tmp_path):
    """The DPOConfig value is the loss's, as TRL's loss chain reads it: set or not, 0 or not."""
    from dpo_plugins.adapters.loss_selection import select_losses
    from dpo_plugins.workflows.train import build_settings
    from dpo_plugins import cli

    def bound(*argv):
        args, extra = cli.build_parser().parse_known_args(["train", "--output-dir", str(tmp_path), *argv])
        settings = build_settings(args, extra)
        return [dict(term.params) for term in select_losses(settings.dpo, settings.options.loss_param, False)]

    config = tmp_path / "robust.yaml"
    config.write_text("loss: [robust, discopop]\nlabel_smoothing: 0.3\ndiscopop_tau: 0.5\n")
    assert bound("--loss", "robust") == [{"label_smoothing": 0.0}]
    assert bound("--loss", "robust", "--label-smoothing", "0") == [{"label_smoothing": 0.0}]
    assert bound("--config", str(config)) == [{"label_smoothing": 0.3}, {"discopop_tau": 0.5}]
    assert bound("--config", str(config), "--label-smoothing", "0") == [{"label_smoothing": 0.0}, {"discopop_tau": 0.5}]
    assert bound("--config", str(config), "--loss-param", "label_smoothing=0") == [{"label_smoothing": 0.0},
                                                                                   {"discopop_tau": 0.5}]
    assert bound("--loss", "discopop") == [{"discopop_tau": 0.05}]


def test_the_trl_named_losses_default_to_dpoconfig_and_refuse_what_trl_refuses(tokenizer, tmp_path):
    """Every built-in TRL loss declares TRL's DPOConfig defaults; exo_pair at TRL's label_smoothing (0.0) is
    refused by stock DPOTrainer and here, before any model loads."""
    import dataclasses

    from trl import DPOConfig, DPOTrainer

    from dpo_plugins.adapters.loss_selection import select_losses
    from dpo_plugins.default_plugins.losses import TRL_LOSSES
    from dpo_plugins.errors import DpoPluginsError

    defaults = {f.name: f.default for f in dataclasses.fields(DPOConfig)}
    for name, _, params, _, _ in TRL_LOSSES:
        assert {key: defaults[key] for key in params} == dict(params), name
    args = dpo_config(tmp_path, "exo", loss_type=["exo_pair"])
    with pytest.raises(ValueError, match="Label smoothing must be greater than 0.0"):
        make_trainer(DPOTrainer, tokenizer, args)
    with pytest.raises(DpoPluginsError, match=r"exo_pair needs label_smoothing in \(0, 1\), got 0.0"):
        select_losses(args, None, True)
    args.label_smoothing, args.loss_type = 0.5, ["robust"]
    with pytest.raises(DpoPluginsError, match=r"robust needs label_smoothing in \[0, 0.5\), got 0.5"):
        select_losses(args, None, True)
