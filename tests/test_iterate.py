"""``dpo iterate``: pair rules on fixed scores, judge scoring, sampling, and tiny end-to-end rounds.

The end-to-end tests run tiny random models (tests/conftest.py) with DICE
or a rule judge, so a round takes seconds; a round's training is compared
with ``dpo train`` on the same pairs and settings, per-step loss by loss.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from dpo_plugins import PairBuilder, hookimpl
from dpo_plugins.cli import main
from dpo_plugins.default_plugins.pair_builders import all_above_margin, best_vs_worst
from dpo_plugins.errors import PluginError
from dpo_plugins.specs import Judge
from dpo_plugins.workflows.iterate import build_pairs

from conftest import build_tiny_model

# -- pair rules on fixed scores --------------------------------------------------------------------------


def test_best_vs_worst_pairs_the_highest_with_the_lowest_score():
    assert best_vs_worst([0.2, 0.9, -1.0, 0.5]) == ([(1, 2)], 0)
    assert best_vs_worst([3.0, 1.0, 3.0, 1.0]) == ([(0, 1)], 0)  # the first of equal scores
    assert best_vs_worst([0.5, 0.5, 0.5]) == ([], 1)  # a tie: dropped and counted
    assert best_vs_worst([0.50, 0.55, 0.52], margin=0.1) == ([], 1)  # a near-tie
    assert build_pairs("best-vs-worst", [0.50, 0.55, 0.52], {"margin": 0.01}) == ([(1, 0)], 0)


def test_all_above_margin_keeps_every_pair_apart_by_more_than_the_margin():
    assert all_above_margin([1.0, 0.0, 0.5]) == ([(0, 1), (0, 2), (2, 1)], 0)
    assert all_above_margin([1.0, 0.0, 0.95], margin=0.1) == ([(0, 1), (2, 1)], 1)
    assert all_above_margin([1.0, 1.0, 1.0, 1.0]) == ([], 6)


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=8), st.floats(0, 2))
def test_pair_rules_obey_the_margin_and_count_every_dropped_pair(scores, margin):
    pairs, dropped = build_pairs("all-above-margin", scores, {"margin": margin})
    assert len(pairs) + dropped == len(scores) * (len(scores) - 1) // 2
    assert all(scores[c] - scores[r] > margin for c, r in pairs)
    assert len({frozenset(p) for p in pairs}) == len(pairs)
    pairs, dropped = build_pairs("best-vs-worst", scores, {"margin": margin})
    spread = max(scores) - min(scores)
    assert (pairs, dropped) == (([(scores.index(max(scores)), scores.index(min(scores)))], 0) if spread > margin
                                else ([], 1))


class BestVsSecond:
    """A third party's pair builder: the best sample against the runner-up."""

    @hookimpl
    def register_pair_builders(self):
        def best_vs_second(scores, margin=0.0, **params):
            order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
            if scores[order[0]] - scores[order[1]] > margin:
                return [(order[0], order[1])], 0
            return [], 1

        yield PairBuilder(name="best-vs-second", fn=best_vs_second, params={"margin": 0.0})

        def backwards(scores, **params):
            return [(scores.index(min(scores)), scores.index(max(scores)))], 0

        yield PairBuilder(name="backwards", fn=backwards)


def test_a_third_party_pair_builder_registers_through_the_hook_and_is_used_by_name(registered):
    from dpo_plugins import get_pair_builders

    registered(BestVsSecond(), "best-vs-second-plugin")
    assert {"best-vs-worst", "all-above-margin", "best-vs-second"} <= set(get_pair_builders())
    assert build_pairs("best-vs-second", [0.1, 0.9, 0.7, 0.8]) == ([(1, 3)], 0)
    with pytest.raises(PluginError, match="chosen one scored higher"):
        build_pairs("backwards", [0.1, 0.9])


def test_pair_builders_are_listed_by_dpo_plugins(capsys):
    assert main(["plugins", "--json"]) == 0
    listed = {(entry["name"], entry["kind"]) for entry in json.loads(capsys.readouterr().out)}
    assert {("best-vs-worst", "pair_builder"), ("all-above-margin", "pair_builder")} <= listed


# -- judge scores on fixed verdicts ------------------------------------------------------------------------


class LongerWins:
    """A rule judge: the longer output wins; outputs of equal length tie. Fails on a prompt saying 'boom'."""

    calls: list = []
    failing = True

    @hookimpl
    def register_judges(self):
        def longer(prompts, outputs_a, outputs_b, **params):
            LongerWins.calls.extend(prompts)
            if LongerWins.failing and any("boom" in str(p) for p in prompts):
                raise RuntimeError("the judge's server hung up")
            return ["a" if len(a) > len(b) else "b" if len(b) > len(a) else "tie" for a, b in zip(outputs_a, outputs_b)]

        yield Judge(name="longer-wins", fn=longer)
        yield Judge(name="always-tie", fn=lambda prompts, a, b, **params: ["tie"] * len(prompts))


def test_round_robin_and_anchor_scores_from_a_rule_judge(registered):
    from dpo_plugins.evals.sample_scores import judge_scores

    registered(LongerWins(), "longer-wins-plugin")
    scores, info = judge_scores("longer-wins", "round-robin", "p", ["a", "bbb", "cc"])
    assert scores == [0.0, 1.0, 0.5]
    assert info["name"] == "longer-wins" and info["provider"].startswith("longer-wins-plugin")
    assert judge_scores("longer-wins", "anchor", "p", ["a", "bbb", "c"])[0] == [0.5, 1.0, 0.5]


# -- sampling --------------------------------------------------------------------------------------------


def test_batched_sampling_is_reproducible_for_a_fixed_seed(tokenizer):
    from dpo_plugins.evals.sampling import sample_batch
    from dpo_plugins.evals.judging import GenerationSettings

    model = build_tiny_model(tokenizer).eval()
    prompts = ["Hello there", [{"role": "user", "content": "What is two plus two?"}]]
    settings = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=0.9)
    first = sample_batch(model, tokenizer, prompts, 3, settings, seed=7)
    assert [len(group) for group in first] == [3, 3]
    assert all(1 <= s.tokens <= 6 for group in first for s in group)
    assert sample_batch(model, tokenizer, prompts, 3, settings, seed=7) == first
    assert sample_batch(model, tokenizer, prompts, 3, settings, seed=8) != first


# -- end to end on tiny models -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, tokenizer):
    """A tiny policy and the tiny reference it is pretended to be DPO-trained against (for DICE)."""
    root = tmp_path_factory.mktemp("iterate-models")
    for seed, name in ((0, "policy"), (1, "ref")):
        build_tiny_model(tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}]}) + "\n"
                               for i in range(4)))
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"prompt": f"Say {i}.", "chosen": f" {i}", "rejected": f" not {i}"}) + "\n"
                               for i in range(4)))
    return root


TRAINER = ["--max-steps", "2", "--per-device-train-batch-size", "2", "--logging-steps", "1", "--learning-rate",
           "1e-3", "--seed", "3", "--report-to", "none", "--disable-tqdm", "true", "--save-strategy", "no"]


def _iterate(root, out, *extra, rounds=2):
    return ["iterate", "--model", root / "policy", "--prompts", root / "prompts.jsonl", "--output", out,
            "--rounds", str(rounds), "--samples-per-prompt", "3", "--max-new-tokens", "6",
            "--generation-batch-size", "2", *map(str, extra), *TRAINER]


def _error(capsys) -> list[str]:
    """The error's lines: from ``dpo iterate: error:`` to the end of stderr (progress bars come before it)."""
    err = capsys.readouterr().err
    return err[err.index("dpo iterate: error:"):].strip().splitlines()


def _losses(model_dir):
    state = json.loads((Path(model_dir) / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_rounds_train_exactly_as_dpo_train_and_a_full_disk_keeps_finished_rounds(tiny_pair, tmp_path, capsys,
                                                                                monkeypatch):
    from dpo_plugins.workflows import iterate as workflow

    out = tmp_path / "run"
    argv = [str(a) for a in _iterate(tiny_pair, out, "--judge", "dice", "--dice-ref", tiny_pair / "ref",
                                     "--eval-data", tiny_pair / "heldout.jsonl", "--azure")]
    real_write = workflow._write_rows

    def disk_fills_in_round_2(path, rows):
        if path.parent.name == "round-2" and path.name == "scores.jsonl":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, rows)

    monkeypatch.setattr(workflow, "_write_rows", disk_fills_in_round_2)
    assert main(argv) == 1
    assert _error(capsys) == [f"dpo iterate: error: round 2, judge: {out}/round-2/scores.jsonl: No space left on "
                              f"device (rounds 1-1 and round 2's finished phases are kept in {out}; the same command "
                              "resumes)"]
    assert (out / "round-1" / "round.json").is_file() and (out / "round-2" / "generate.json").is_file()
    assert not (out / "round-2" / "judge.json").exists() and (out / "report.md").is_file()
    samples = (out / "round-2" / "samples.jsonl").stat().st_mtime_ns

    monkeypatch.setattr(workflow, "_write_rows", real_write)
    assert main(argv) == 0  # resumes in round 2's judge phase
    assert (out / "round-2" / "samples.jsonl").stat().st_mtime_ns == samples

    rows = [json.loads(line) for line in (out / "round-2" / "pairs.jsonl").read_text().splitlines()]
    meta = rows[0]["dpo_metadata"]
    assert meta["judge"]["name"] == "dice" and meta["judge"]["reference"] == str(tiny_pair / "policy")
    assert meta["pair_builder"]["name"] == "best-vs-worst" and meta["chosen_score"] > meta["rejected_score"]
    from dpo_plugins import get_format

    hosted = [get_format("azure").to_record(json.loads(line))
              for line in (out / "round-2" / "pairs.azure.jsonl").read_text().splitlines()]
    assert [(r.prompt, r.chosen, r.rejected, r.metadata) for r in hosted] == [
        (r.prompt, r.chosen, r.rejected, {}) for r in map(get_format("hf").to_record, rows)]
    summary = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in summary] == [1, 2] and summary[1]["eval"]["n_pairs"] == 4
    assert "held-out reward accuracy" in (out / "report.md").read_text() and (out / "rounds.png").is_file()

    # round 1: dpo train from the initial model; round 2: from round 1's policy against the initial model
    for number, model, ref in ((1, tiny_pair / "policy", None), (2, out / "round-1" / "model", tiny_pair / "policy")):
        trained = tmp_path / f"dpo-train-{number}"
        assert main(["train", "--model", str(model), "--data", str(out / f"round-{number}" / "pairs.jsonl"),
                     "--output-dir", str(trained), *(["--ref-model", str(ref)] if ref else []), *TRAINER]) == 0
        assert _losses(trained) == _losses(out / f"round-{number}" / "model")
        assert len(_losses(trained)) == 2


@pytest.mark.parametrize("prepare, flags, message", [
    (lambda root: (root / "empty.jsonl").write_text(""), ["--prompts", "{root}/empty.jsonl"], "no prompts"),
    (None, ["--samples-per-prompt", "1"], "samples_per_prompt: expected an integer >= 2, got 1"),
    (None, ["--judge", "dice"], "judge dice: give --dice-ref"),
    (None, ["--pair-builder", "nope"], "unknown pair builder 'nope'"),
    (None, ["--pair-param", "margin=wide"], "pair_param margin: expected a float, got 'wide'"),
    (None, ["--pair-param", "width=1"], "pair_param width: pair builder 'best-vs-worst' has no such parameter"),
    (None, ["--loss", "nope"], "nope"),
    (None, ["--lora"], "--lora: not supported by dpo iterate"),
    (None, ["--output-dir", "x"], "--output-dir: set by dpo iterate in every round"),
])
def test_bad_options_are_refused_before_any_model_loads(tiny_pair, tmp_path, capsys, prepare, flags, message):
    if prepare:
        prepare(tmp_path)
    out = tmp_path / "run"
    argv = [str(a) for a in _iterate(tiny_pair, out, rounds=1)]
    assert main([*argv, *(f.replace("{root}", str(tmp_path)) for f in flags)]) == 1  # a later flag wins
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_judge_that_fails_on_one_prompt_and_every_pair_a_tie(tiny_pair, tmp_path, capsys, registered):
    registered(LongerWins(), "longer-wins-plugin")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("one", "two", "boom three")))
    out = tmp_path / "run"
    argv = [str(a) for a in _iterate(tiny_pair, out, "--judge", "longer-wins", "--eval-data",
                                     tiny_pair / "heldout.jsonl", "--winrate-prompts", 2, rounds=1)]
    argv[argv.index("--prompts") + 1] = str(prompts)
    LongerWins.calls.clear()
    LongerWins.failing = True
    assert main(argv) == 1
    (error,) = _error(capsys)
    assert "round 1, judge: prompt 3 of" in error and "the judge's server hung up" in error
    assert len(list((out / "round-1" / "judge-cache").iterdir())) == 2 and (out / "round-1" / "samples.jsonl").is_file()

    LongerWins.calls.clear()
    LongerWins.failing = False
    assert main(argv) == 0  # resumes: only the third prompt is judged again, then the held-out win-rate
    assert "boom three" in LongerWins.calls and not {"one", "two"} & set(LongerWins.calls)
    evaluated = json.loads((out / "round-1" / "eval.json").read_text())
    assert evaluated["win_rate"] is not None and evaluated["n_pairs"] == 4
    assert json.loads((out / "round-1" / "eval" / "metrics.json").read_text())["judge"] == "longer-wins"

    tie = tmp_path / "tie"
    argv[argv.index("--judge") + 1] = "always-tie"
    argv[argv.index("--output") + 1] = str(tie)
    assert main(argv) == 1
    (error,) = _error(capsys)
    assert "round 1, pairs: every candidate pair was a tie: 3 dropped by pair builder 'best-vs-worst'" in error
    assert (tie / "round-1" / "scores.jsonl").is_file()


@pytest.mark.slow
def test_a_run_killed_mid_round_resumes_without_redoing_finished_phases(tiny_pair, tmp_path):
    """The process is killed (SIGKILL) once round 2's samples are written; the rerun finishes the run."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "dpo_plugins", *map(str, _iterate(tiny_pair, out, "--judge", "dice", "--dice-ref",
                                                                    tiny_pair / "ref"))]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "round-2" / "generate.json"
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (out / "round-2" / "round.json").exists()
    kept = {name: (out / name).stat().st_mtime_ns for name in
            ("round-1/samples.jsonl", "round-1/model/model.safetensors", "round-2/samples.jsonl")}
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert json.loads((out / "round-2" / "round.json").read_text())["round"] == 2
    assert (out / "report.md").is_file()
