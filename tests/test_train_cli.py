"""``dpo train`` as users run it: config files, flags, plugins, LoRA, resume, SFT-first, accelerate."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dpo_plugins import cli, plugins
from dpo_plugins.errors import DpoPluginsError
from conftest import TWO_PROCESSES
from test_train import conversational_rows

LN2 = math.log(2)
# At step 0 the margin is 0 up to rounding: the reference is precomputed with a float64 log-softmax, the policy's
# log-probs are float32 sums, so a sigmoid loss is ln 2 within ~1e-6 (times its scale).
STEP0 = 1e-5
ROOT = Path(__file__).resolve().parent.parent
FAST = ["--max-steps", "1", "--logging-steps", "1", "--per-device-train-batch-size", "2", "--save-strategy", "no",
        "--gradient-checkpointing", "false", "--disable-tqdm", "true"]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in conversational_rows()))
    return path


def settings_for(argv):
    from dpo_plugins.workflows.train import build_settings

    args, extra = cli.build_parser().parse_known_args(["train", *argv])
    return build_settings(args, extra)


def log_history(output_dir):
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def step_losses(output_dir):
    return [entry["loss"] for entry in log_history(output_dir) if "loss" in entry]


def test_hosted_names_map_and_flags_override_the_config(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(textwrap.dedent("""\
        # an Azure OpenAI DPO job's hyperparameters
        beta: 0.3
        n_epochs: 2
        batch_size: 4
        learning_rate_multiplier: 10
        loss: [sigmoid, ipo]
        loss_weights: [0.8, 0.2]
        loss_param: {ipo.unused: 1}
        max_length: 256
    """))
    settings = settings_for(["--config", str(config), "--beta", "0.5", "--output-dir", str(tmp_path / "out"),
                             "--loss-param", "label_smoothing=0.1"])
    dpo = settings.dpo
    assert (dpo.beta, dpo.num_train_epochs, dpo.per_device_train_batch_size) == (0.5, 2.0, 4)
    assert dpo.learning_rate == pytest.approx(1e-5)
    assert (dpo.loss_type, dpo.loss_weights, dpo.max_length) == (["sigmoid", "ipo"], [0.8, 0.2], 256)
    assert dpo.output_dir == str(tmp_path / "out") and dpo.bf16 is False  # fp32 on CPU
    assert settings.options.loss_param == {"ipo.unused": 1, "label_smoothing": "0.1"}
    assert settings.options.model == "smollm2"
    with pytest.raises(DpoPluginsError, match=rf"{config}:4: batch_size: 4 pairs per step, but per_device_train_batch_size 4 x 1 processes x gradient_accumulation_steps 2 = 8"):
        settings_for(["--config", str(config), "--gradient-accumulation-steps", "2"])
    single = tmp_path / "single.yaml"
    single.write_text("loss: simpo\n")
    assert settings_for(["--config", str(single)]).dpo.loss_type == ["simpo"]


def test_every_config_problem_is_listed_with_its_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rat: 1e-5\nbatch_size: many\nn_epochs: 2\nnum_train_epochs: 3\n")
    assert cli.main(["train", "--config", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"dpo train: error: {config}:1: learning_rat: unknown option; did you mean 'learning_rate'?",
        f"{config}:2: batch_size: expected a positive number or 'auto', got 'many'",
        f"{config}:3: n_epochs: also set as num_train_epochs; give one of them",
    ]


def test_unknown_flags_and_bad_data_are_clear_errors(tmp_path, capsys, pairs_file):
    assert cli.main(["train", "--data", str(pairs_file), "--no-such-field", "1"]) == 1
    assert "unknown option(s) --no-such-field 1" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{oops\n{"prompt": "p", "chosen": "a"}\n'
                   '{"prompt": [], "chosen": "a", "rejected": 3}\n')
    assert cli.main(["train", "--data", str(bad), "--output-dir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"dpo train: error: 4 problem(s) in {bad} (read as hf, detected):",
        f"{bad}:2: $: invalid JSON: unexpected character, expected a string key: column 2 [json]",
        f"{bad}:3: rejected: missing; rows need chosen and rejected (and usually prompt) [schema]",
        f"{bad}:4: prompt: must be a string (standard format) like chosen, found list [schema]",
        f"{bad}:4: rejected: must be a string (standard format) like chosen, found int [schema]",
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--sft-first", "--ref-model", "x"], "--sft-first uses the SFT model as the reference; do not also give --ref-model"),
    (["--loss", "simpo", "--ref-model", "x"], "a reference model was given, but the losses (simpo) use none"),
    (["--loss", "sigmoid", "--loss-type", "ipo"], "give the losses once"),
    (["--eval-strategy", "steps"], "eval_strategy='steps' needs --eval-data"),
    (["--resume-from-checkpoint", "last"], "--resume-from-checkpoint last: no complete checkpoint-* directory in"),
    (["--loss", "exo_pair"], "exo_pair needs label_smoothing in (0, 1), got 0.0 (TRL refuses 0 too"),
    (["--loss", "robust", "--label-smoothing", "0.5"], "robust needs label_smoothing in [0, 0.5), got 0.5"),
])
def test_unsupported_combinations_are_errors(tmp_path, capsys, pairs_file, argv, message):
    assert cli.main(["train", "--data", str(pairs_file), "--output-dir", str(tmp_path / "out"), *argv]) == 1
    assert message in capsys.readouterr().err


def test_fsdp_or_deepspeed_without_gpus_is_refused_not_silently_ddp(tmp_path, capsys, pairs_file, monkeypatch):
    """accelerate enables FSDP / DeepSpeed only for a GPU launch; on CPU `dpo train` refuses them before loading.

    (`accelerate launch --config_file examples/distributed/fsdp2.yaml` sets ACCELERATE_USE_FSDP; without
    this check the two processes trained with DDP and reported nothing.)
    """
    import importlib.util

    out = tmp_path / "out"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert cli.main(["train", "--data", str(pairs_file), "--output-dir", str(out)]) == 1
    assert "FSDP needs GPUs: accelerate enables it only for a GPU launch" in capsys.readouterr().err
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert cli.main(["train", "--data", str(pairs_file), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "DeepSpeed needs GPUs" in err
    assert ("DeepSpeed is not installed: pip install deepspeed" in err) == (importlib.util.find_spec("deepspeed") is None)
    assert not out.exists()


PLUGIN_MODULE = """
import torch.nn.functional as F
from dpo_plugins import Loss, hookimpl

def {name}(batch, beta, factor=1.0, **params):
    margin = (batch.chosen_logps - batch.ref_chosen_logps) - (batch.rejected_logps - batch.ref_rejected_logps)
    return -factor * F.logsigmoid(beta * margin)

@hookimpl
def register_losses():
    yield Loss(name="{name}", fn={name}, params={{"factor": {factor}}})
"""


def test_an_installed_third_party_loss_package_trains(tmp_path, tiny_model_dir, pairs_file, run_dpo,
                                                     example_plugin_site):
    """examples/dpo-plugins-double-sigmoid pip-installed (entry point) plus a DPO_PLUGINS module, weighted."""
    site = example_plugin_site
    (site / "env_loss.py").write_text(PLUGIN_MODULE.format(name="env_sigmoid", factor=5.0))
    out = tmp_path / "out"
    result = run_dpo("train", "--model", tiny_model_dir, "--data", pairs_file, "--output-dir", out, *FAST,
                     "--loss", "double_sigmoid", "env_sigmoid", "--loss-weights", "0.5", "0.25",
                     "--loss-param", "scale=3",
                     env={"PYTHONPATH": str(site), "DPO_PLUGINS": "env_loss", "DPO_DISABLE_PLUGIN_AUTOLOAD": None})
    assert result.returncode == 0, result.stderr
    assert "loss = 0.5 * double_sigmoid(scale=3.0) + 0.25 * env_sigmoid(factor=5.0)" in result.stderr
    # Step 0: policy == reference, so each sigmoid term is ln 2 times its scale.
    assert step_losses(out) == pytest.approx([(0.5 * 3 + 0.25 * 5) * LN2], abs=STEP0)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_a_plugin_option_module_trains_and_logs_trl_metrics(tmp_path, tiny_model_dir, pairs_file, monkeypatch, capsys):
    (tmp_path / "option_loss.py").write_text(PLUGIN_MODULE.format(name="option_sigmoid", factor=2.0))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    try:
        code = cli.main(["train", "--plugin", "option_loss", "--model", str(tiny_model_dir), "--data", str(pairs_file),
                         "--output-dir", str(out), "--loss", "option_sigmoid", *FAST])
    finally:
        plugins.pm.unregister(name="option_loss")
    assert code == 0, capsys.readouterr().err
    entry = next(entry for entry in log_history(out) if "loss" in entry)
    assert entry["loss"] == pytest.approx(2 * LN2, abs=STEP0)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "logits/chosen", "entropy", "mean_token_accuracy"} <= entry.keys()
    assert entry["rewards/margins"] == pytest.approx(0.0, abs=STEP0)


def test_lora_trains_saves_an_adapter_and_resumes_after_a_kill(tmp_path, tiny_model_dir, pairs_file, run_dpo):
    out = tmp_path / "out"
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(pairs_file), "--output-dir", str(out), "--lora",
            "--lora-r", "4", "--max-steps", "4", "--logging-steps", "1", "--per-device-train-batch-size", "2",
            "--save-steps", "1", "--learning-rate", "1e-3", "--gradient-checkpointing", "false",
            "--disable-tqdm", "true"]
    first = subprocess.Popen([sys.executable, "-m", "dpo_plugins", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():  # the run ends (4 steps): no clock needed
        assert first.poll() is None, "the first run ended before writing checkpoint-2"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "trainer_state.json").exists(), "the first run finished before it was killed"
    result = run_dpo(*argv, "--resume-from-checkpoint", "last")
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr and "checkpoint-" in result.stderr
    history = [entry["step"] for entry in log_history(out) if "loss" in entry]
    assert history == [1, 2, 3, 4]
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("lora", [[], ["--lora", "--lora-r", "4"]], ids=["full", "lora"])
def test_sft_first_then_dpo_against_the_sft_model(tmp_path, tiny_model_dir, pairs_file, capsys, lora):
    """With --lora the SFT adapter is merged into sft-model and DPO trains a fresh adapter on it."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    code = cli.main(["train", "--model", str(tiny_model_dir), "--data", str(pairs_file), "--eval-data",
                     str(pairs_file), "--output-dir", str(out), "--sft-first", "--sft-learning-rate", "1e-2", *lora,
                     *FAST])
    assert code == 0, capsys.readouterr().err
    sft = out / "sft-model"
    assert (sft / "dpo-plugins-sft-complete.json").is_file()
    base, tuned = load_file(tiny_model_dir / "model.safetensors"), load_file(sft / "model.safetensors")
    assert any((base[name] - tuned[name]).abs().max() > 1e-4 for name in base), "SFT did not change the model"
    # DPO starts from the SFT model and uses it as the reference: zero margin, loss ln 2.
    assert step_losses(out) == pytest.approx([LN2], abs=STEP0)
    assert json.loads((out / "all_results.json").read_text()).keys() >= {"train_loss", "eval_loss"}
    assert any("eval_rewards/accuracies" in entry for entry in log_history(out))
    assert (out / ("adapter_model.safetensors" if lora else "model.safetensors")).is_file()


@pytest.mark.slow
def test_two_processes_and_two_machines_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir):
    """accelerate launch runs `dpo train` and `dpo eval` unchanged; DDP == one process on the same global batch.

    Six pairs at 4 a step: step 1 trains 4, step 2 the other 2 (one process) -- which accelerate pads
    with 2 of step 1's pairs under several processes, weighed 0 by `dpo train` (adapters/padded_batches.py)
    -- and step 3 starts epoch 2. Two processes on one machine run the reference in each step (the
    default there); two accelerate "machines" on 127.0.0.1 use the reference log-probs precomputed
    together into one fresh cache entry, then `dpo eval` the trained model. Every process trains with
    the packed forward, run through the DDP wrapper (adapters/ddp_forward.py).
    Losses, metrics and the saved weights equal the single process's to 1e-5.
    """
    from safetensors.torch import load_file

    from conftest import free_port, run_together, two_machines

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in conversational_rows()[:6]))
    # Plain SGD: AdamW's first update lr * g / (|g| + eps) turns DDP's float32 rounding of near-zero gradients
    # into 1e-4 weight differences (tests/test_loss_parity.py); SGD compares what the trainers compute.
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "3", "--logging-steps", "1",
              "--optim", "sgd", "--learning-rate", "0.5", "--beta", "0.5", "--save-strategy", "no",
              "--disable-tqdm", "true", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(prefix, name, batch, *extra):
        return [*prefix, "-m", "dpo_plugins", "train", *common, *extra, "--output-dir", str(tmp_path / name),
                "--per-device-train-batch-size", str(batch)]

    single = subprocess.run(train([sys.executable], "one", 4), capture_output=True, text=True, timeout=600, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(train(TWO_PROCESSES, "two", 2), capture_output=True, text=True, timeout=600, env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "reference log-probs for train" not in double.stderr
    assert "forward: packed" in double.stderr and "forward: TRL" not in double.stderr  # through the DDP wrapper
    machines_env = {**env, "DPO_PLUGINS_CACHE": str(tmp_path / "machines-cache")}
    (tmp_path / "machines-cache").mkdir()
    (tmp_path / "machines-cache" / "smollm2-135m-instruct").symlink_to(
        Path(os.environ["DPO_PLUGINS_CACHE"]) / "smollm2-135m-instruct")
    machines = run_together([train(prefix, "machines", 2, "--precompute-ref-log-probs", "true")
                             for prefix in two_machines(free_port())], env=machines_env)
    for result in machines:
        assert result.returncode == 0, result.stderr[-3000:]
    assert "reference log-probs for train: computed and cached" in machines[0].stderr
    assert all("forward: packed" in result.stderr for result in machines)
    assert len(list((tmp_path / "machines-cache" / "ref-logps").iterdir())) == 1  # written once

    one = [entry for entry in log_history(tmp_path / "one") if "loss" in entry]
    assert len(one) == 3 and len({round(entry["loss"], 4) for entry in one}) == 3
    assert one[1]["num_tokens"] - one[0]["num_tokens"] < one[0]["num_tokens"]  # step 2: the 2 remaining pairs
    weights = load_file(tmp_path / "one" / "model.safetensors")
    for name in ("two", "machines"):
        logs = [entry for entry in log_history(tmp_path / name) if "loss" in entry]
        for key in ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/margins", "num_tokens"):
            assert [e[key] for e in logs] == pytest.approx([e[key] for e in one], abs=1e-5, rel=1e-5), (name, key)
        trained = load_file(tmp_path / name / "model.safetensors")
        assert max((trained[key] - weights[key]).abs().max().item() for key in weights) < 1e-5, name

    # dpo eval of the trained model, one process against two machines: the same report.
    evaluate = ["-m", "dpo_plugins", "eval", "--model", str(tmp_path / "one"), "--ref", str(tiny_model_dir),
                "--data", str(data), "--batch-size", "2", "--no-progress", "--report"]
    alone = subprocess.run([sys.executable, *evaluate, str(tmp_path / "eval-one")], capture_output=True, text=True,
                           timeout=600, env=machines_env)
    assert alone.returncode == 0, alone.stderr[-3000:]
    for result in run_together([[*prefix, *evaluate, str(tmp_path / "eval-machines")]
                                for prefix in two_machines(free_port())], env=machines_env):
        assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "eval-one" / "pairs.jsonl").read_text() == (tmp_path / "eval-machines" / "pairs.jsonl").read_text()
    reports = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("eval-one", "eval-machines")]
    assert (reports[0].pop("processes"), reports[1].pop("processes")) == (1, 2)
    assert reports[0] == reports[1]


def test_the_reference_is_computed_once_and_a_beta_sweep_reads_it_from_disk(tmp_path, tiny_model_dir, pairs_file,
                                                                             monkeypatch, caplog, packed_calls):
    """By default `dpo train` precomputes the reference through the cache; --trl-forward is stock TRL, same losses."""
    import logging

    monkeypatch.setenv("DPO_PLUGINS_CACHE", str(tmp_path / "cache"))
    common = ["--model", str(tiny_model_dir), "--data", str(pairs_file), "--max-steps", "3", "--logging-steps", "1",
              "--per-device-train-batch-size", "2", "--learning-rate", "1e-3", "--save-strategy", "no",
              "--gradient-checkpointing", "false", "--disable-tqdm", "true"]
    with caplog.at_level(logging.INFO, logger="dpo_plugins.train"):
        for name, beta in (("first", "0.1"), ("sweep", "0.5")):
            assert cli.main(["train", *common, "--beta", beta, "--output-dir", str(tmp_path / name)]) == 0
    outcomes = [line for line in caplog.text.splitlines() if "reference log-probs for train" in line]
    assert ["computed and cached" in outcomes[0], "read from the cache" in outcomes[1]] == [True, True]
    assert len(list((tmp_path / "cache" / "ref-logps").iterdir())) == 1
    assert len(packed_calls) == 2 * 3  # the policy's forward only, in each step of both runs

    packed_calls.clear()
    assert cli.main(["train", *common, "--beta", "0.1", "--trl-forward", "--output-dir", str(tmp_path / "trl")]) == 0
    assert packed_calls == []
    assert step_losses(tmp_path / "first") == pytest.approx(step_losses(tmp_path / "trl"), abs=1e-5, rel=0)
    assert len(set(round(loss, 4) for loss in step_losses(tmp_path / "trl"))) > 1  # the policy moved


def test_the_reference_is_precomputed_unless_told_or_it_cannot_be(tmp_path, pairs_file, monkeypatch):
    from dpo_plugins.adapters.training import precompute_reference
    from dpo_plugins.adapters.loss_selection import inherited_loss_params, resolve_losses

    def decided(*flags, processes="1"):
        monkeypatch.setenv("WORLD_SIZE", "1")  # building a DPOConfig under WORLD_SIZE=2 would start torch.distributed
        settings = settings_for(["--data", str(pairs_file), "--output-dir", str(tmp_path), *flags])
        args, options = settings.dpo, settings.options
        terms = resolve_losses(args.loss_type, args.loss_weights, options.loss_param, inherited_loss_params(args))
        monkeypatch.setenv("WORLD_SIZE", processes)  # as accelerate launch sets it
        return precompute_reference(terms, args, options)

    assert decided() is True
    assert decided("--precompute-ref-log-probs", "false") is False
    assert decided("--trl-forward") is False
    assert decided("--sync-ref-model", "true") is False
    assert decided("--loss", "simpo") is False
    assert decided(processes="2") is False  # several processes: TRL's per-step reference
    assert decided("--precompute-ref-log-probs", "true", processes="2") is True


def test_azure_data_trains_through_the_format_plugins(tmp_path, tiny_model_dir, pairs_file, run_dpo):
    """--data in the Azure format is converted on the fly; the same pairs as TRL rows give the same step."""
    azure = tmp_path / "pairs.azure.jsonl"
    converted = run_dpo("convert", pairs_file, azure, "--from", "hf", "--to", "azure")
    assert converted.returncode == 0, converted.stderr
    logged = {}
    for name, data in (("hf", pairs_file), ("azure", azure)):
        assert cli.main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
                         str(tmp_path / name), "--seed", "0", *FAST]) == 0
        entry = next(entry for entry in log_history(tmp_path / name) if "loss" in entry)
        logged[name] = (entry["loss"], entry["logps/chosen"], entry["logps/rejected"], entry["num_tokens"])
    assert logged["azure"] == logged["hf"]
    assert logged["hf"][1] != logged["hf"][2]  # the log-probs depend on the data


def test_resume_skips_a_checkpoint_half_written_when_the_run_was_killed(tmp_path):
    from dpo_plugins.adapters.training import last_complete_checkpoint

    for step, state in ((1, "{}"), (2, '{"global_step": 2}'), (3, None), (4, '{"global_st')):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_bytes(b"")
        if state is not None:
            (checkpoint / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-final").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert last_complete_checkpoint(tmp_path / "checkpoint-1") is None
