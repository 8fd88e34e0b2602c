"""The demo's own report: what the steps' outputs say, in one place.

Reads what ``dpo train`` and ``dpo eval`` wrote (``trainer_state.json``,
the eval's ``metrics.json`` and ``pairs.jsonl``) and writes the demo's
``metrics.json``, ``report.md`` and plots. Nothing here recomputes a number.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from dpo_plugins.evals.report import dump_json, percent, publish_report, pyplot, save_figure

JUDGE_CAVEAT = (
    "The judge is a small local model (`llm-pairwise` with SmolLM2-135M-Instruct by default). It reads its "
    "next-token probabilities of the labels A and B with the answers in both orders and averages them into one "
    "preference per prompt, so its pull towards one position cancels and a tie is rare. A 135M model is still a "
    "weak judge: it follows position and surface cues more than content, so read the win-rate as a check that "
    "the pipeline runs end to end, not as evidence that the tuned model is better. Use a strong judge "
    "(`openai-compatible` against a large model, or `reward-model`) for real decisions; see docs/evals.md."
)


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _margins(report_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (report_dir / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row["margin"] for row in rows if row["margin"] is not None]


def _with_interval(metrics: dict) -> dict:
    """Reward accuracy (ties wrong) with its 95% Wilson interval over the held-out pairs."""
    from dpo_plugins.evals.stats import wilson_interval

    n, accuracy = metrics["n_pairs"], metrics["reward_accuracy"]
    correct = round(accuracy * n)  # accuracy is correct / n exactly
    return {"accuracy": accuracy, "correct": correct, "n_pairs": n, "wilson_95": wilson_interval(correct, n - correct, 0)}


def _training_curves(log_history: list[dict]) -> dict:
    steps = [entry for entry in log_history if "loss" in entry and "rewards/margins" in entry]
    return {key: [entry[key] for entry in steps]
            for key in ("step", "loss", "rewards/margins", "rewards/accuracies")}


def summarise(output_dir: Path, settings, timings) -> dict:
    after = _json(output_dir / "eval" / "metrics.json")
    before, after_ref_free = after["ref_free_mean"]["ref"], after["ref_free_mean"]["model"]
    curves = _training_curves(_json(output_dir / "train" / "trainer_state.json")["log_history"])
    win_keys = ("wins", "losses", "ties", "discrete_win_rate", "win_rate", "win_rate_ci", "win_rate_ci_method", "lc_win_rate",
                "lc_win_rate_note", "position_consistency", "first_position_rate", "avg_len_policy",
                "avg_len_baseline", "judge")
    return {
        "settings": asdict(settings),
        "training": {"steps": curves["step"][-1] if curves["step"] else 0,
                     "first_loss": curves["loss"][0], "final_loss": curves["loss"][-1],
                     "final_rewards/margins": curves["rewards/margins"][-1],
                     "final_rewards/accuracies": curves["rewards/accuracies"][-1], "curves": curves},
        "heldout": {
            "n_pairs": after["n_pairs"],
            "reward_accuracy_before": before["reward_accuracy"],
            "reward_accuracy_after": after_ref_free["reward_accuracy"],
            "mean_margin_before": before["mean_margin"],
            "mean_margin_after": after_ref_free["mean_margin"],
            "reward_mode": "ref-free-mean",
            "implicit_reward_accuracy_after": after["reward_accuracy"],
            "implicit_reward_ties_after": after["reward_ties"],
            "implicit_mean_margin_after": after["mean_margin"],
            "with_interval": {"before": _with_interval(before), "after": _with_interval(after_ref_free),
                              "implicit_after": _with_interval(after)},
        },
        "win_rate": {key: after.get(key) for key in win_keys},
        "judge_check": after.get("judge_check"),
        "timings_s": {title: round(seconds, 1) for title, seconds in timings},
        "total_s": round(sum(seconds for _, seconds in timings), 1),
    }


def write_demo_report(output_dir: Path, settings, timings) -> dict:
    metrics = summarise(output_dir, settings, timings)

    def files(folder: Path) -> None:
        dump_json(folder / "metrics.json", metrics)
        _plot_training(folder / "training.png", metrics["training"]["curves"])
        _plot_implicit_margins(folder / "implicit_margins.png", _margins(output_dir / "eval"))
        shutil.copyfile(output_dir / "eval" / "win_rate.png", folder / "win_rate.png")
        (folder / "report.md").write_text(render(metrics), encoding="utf-8")

    publish_report(output_dir, files)
    return metrics


SMOOTHING_WINDOW = 5


def smooth(values: list[float], window: int = SMOOTHING_WINDOW) -> list[float]:
    """Trailing mean over the last ``window`` steps: one batch of 8 pairs is a noisy estimate."""
    return [sum(values[max(0, i + 1 - window):i + 1]) / len(values[max(0, i + 1 - window):i + 1])
            for i in range(len(values))]


def _plot_training(path: Path, curves: dict) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for axis, key in zip(axes, ("loss", "rewards/margins", "rewards/accuracies")):
        axis.plot(curves["step"], curves[key], marker=".", linewidth=0.8, alpha=0.4, label="per step")
        axis.plot(curves["step"], smooth(curves[key]), linewidth=2,
                  label=f"mean of the last {SMOOTHING_WINDOW} steps")
        axis.set_xlabel("step")
        axis.set_title(f"{key} (training batches)")
    axes[0].axhline(0.6931, color="grey", linestyle="--", linewidth=1)
    axes[0].legend(fontsize=8)
    save_figure(figure, path)


def _plot_implicit_margins(path: Path, after: list[float]) -> None:
    """Before training every implicit margin is exactly 0 (the policy is its reference)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(after, bins=25, color="tab:orange", alpha=0.8, label="after DPO")
    axis.axvline(0, color="tab:blue", linewidth=2, label=f"base model: all {len(after)} margins are 0")
    axis.set_xlabel("implicit reward margin, chosen - rejected (log-ratio vs the base model)")
    axis.set_ylabel("held-out pairs")
    axis.legend()
    save_figure(figure, path)


def _interval(entry: dict) -> str:
    low, high = entry["wilson_95"]
    return f"{percent(entry['accuracy'])} ({entry['correct']}/{entry['n_pairs']}; 95% CI {percent(low)}-{percent(high)})"


INTERVAL_MEANING = (
    "The 95% Wilson interval is the range of true accuracies that these {n} held-out pairs cannot rule out: "
    "a lower bound above 50% means the tuned model prefers the chosen answers more often than chance would "
    "explain; an interval that contains 50% means the demo cannot tell the difference from a coin flip."
)


def _judge_check(check) -> str:
    """How far the demo's judge agrees with the held-out pairs' human labels, next to the floors."""
    if not check:
        return ""
    from dpo_plugins.evals.report import judge_check_section

    return "\n".join(judge_check_section(check))


def render(metrics: dict) -> str:
    s, t, h, w = metrics["settings"], metrics["training"], metrics["heldout"], metrics["win_rate"]
    ci = w["win_rate_ci"]
    ci_text = f"[{percent(ci[0])}, {percent(ci[1])}]" if ci else "n/a"
    timing_rows = "\n".join(f"| {title} | {seconds} |" for title, seconds in metrics["timings_s"].items())
    intervals = h["with_interval"]
    method = "LoRA" if s["lora"] else "full fine-tune"
    position = w["first_position_rate"]
    return f"""# dpo demo report

Model `{s['model']}` (`smollm2` = SmolLM2-135M-Instruct), {method}, sigmoid DPO (beta {s['beta']}, lr {s['learning_rate']}
{s['lr_scheduler_type']}, {t['steps']} steps of {s['batch_size']} pairs, max_length {s['max_length']}), the pairs drawn from the
first {s['train_pairs']} pairs of a customer's Azure OpenAI preference file (Anthropic HH-RLHF harmless-base pairs, MIT), evaluated on the
{h['n_pairs']} held-out pairs at the end of the file (never trained on).

## Held-out implicit reward accuracy

| | base model | after DPO |
| --- | --- | --- |
| implicit DPO reward accuracy (log-ratio vs the base model, RewardBench's definition; ties wrong) | every margin is 0: no preference | **{_interval(intervals['implicit_after'])}** |
| mean implicit margin | 0 | {h['implicit_mean_margin_after']:.4f} |

{INTERVAL_MEANING.format(n=h['n_pairs'])}

![implicit margins](implicit_margins.png)

## Held-out reference-free reward accuracy

| | base model | after DPO |
| --- | --- | --- |
| {h['reward_mode']}: mean per-token log-prob, chosen > rejected; ties wrong | {_interval(intervals['before'])} | {_interval(intervals['after'])} |
| mean margin | {h['mean_margin_before']:.4f} | {h['mean_margin_after']:.4f} |

Each model scored alone (no reference): how often its mean per-token log-prob of the chosen answer beats
the rejected one's. The base model's column is its own preference before any training; the change to the
tuned model's column is what DPO did to that preference, as distinct from the implicit reward above.

## Training

Loss {t['first_loss']:.4f} -> {t['final_loss']:.4f} (ln 2 = 0.6931 at step 0: policy equals reference);
last-step batch reward margin {t['final_rewards/margins']:.4f}, reward accuracy {percent(t['final_rewards/accuracies'])}.
One batch is {s['batch_size']} pairs, so the plots show each step faintly and the mean of the last few steps boldly.

![training](training.png)

## Judged win-rate: tuned vs base on held-out prompts

{w['wins']} wins, {w['ties']} ties, {w['losses']} losses: {percent(w['discrete_win_rate'])} with ties counting half,
95% CI {ci_text} ({w['win_rate_ci_method']}); mean preference (AlpacaEval's win rate) {percent(w['win_rate'])}; length-controlled:
{percent(w['lc_win_rate'])} ({w['lc_win_rate_note'] or 'fitted'}). Position bias: the judge gives the answer it sees
first {percent(position)} preference on average (50% = none), and its verdict survives swapping the answers on
{percent(w['position_consistency'])} of prompts. Mean answer length {w['avg_len_policy']:.1f} (tuned) vs
{w['avg_len_baseline']:.1f} (base) characters.

{JUDGE_CAVEAT}

![win rate](win_rate.png)

{_judge_check(metrics.get("judge_check"))}

## Steps

| step | seconds |
| --- | --- |
{timing_rows}
| **total** | **{metrics['total_s']}** |

Each step's command and console output are in `demo.log`; its own outputs in this folder: `train/` (the tuned
model, `trainer_state.json`) and `eval/` (`metrics.json` with both models' reference-free metrics under
`ref_free_mean`, `pairs.jsonl`, `generations.jsonl`, `report.md`).
"""
