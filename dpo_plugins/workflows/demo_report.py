"""The demo's own report: what the steps' outputs say, in one place.

Reads what ``dpo train`` and ``dpo eval`` wrote (``trainer_state.json``,
each eval's ``metrics.json`` and ``pairs.jsonl``) and writes the demo's
``metrics.json``, ``report.md`` and plots. Nothing here recomputes a number.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from dpo_plugins.evals.report import percent, pyplot, save_figure

JUDGE_CAVEAT = (
    "The judge is a small local model (`llm-pairwise` with SmolLM2-135M-Instruct by default; both orders, a win "
    "only when both orders agree). A 135M model is a weak judge: it mostly follows position and surface cues, so expect many ties and a low "
    "position consistency, and read the win-rate as a check that the pipeline runs end to end, not as evidence "
    "that the tuned model is better. Use a strong judge (`openai-compatible` against a large model, or "
    "`reward-model`) for real decisions; see docs/evals.md."
)


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _margins(report_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (report_dir / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row["margin"] for row in rows if row["margin"] is not None]


def _training_curves(log_history: list[dict]) -> dict:
    steps = [entry for entry in log_history if "loss" in entry and "rewards/margins" in entry]
    return {key: [entry[key] for entry in steps]
            for key in ("step", "loss", "rewards/margins", "rewards/accuracies")}


def summarise(output_dir: Path, settings, timings) -> dict:
    before = _json(output_dir / "eval-before" / "metrics.json")
    after_ref_free = _json(output_dir / "eval-after-ref-free" / "metrics.json")
    after = _json(output_dir / "eval-after" / "metrics.json")
    curves = _training_curves(_json(output_dir / "train" / "trainer_state.json")["log_history"])
    win_keys = ("wins", "losses", "ties", "win_rate", "win_rate_ci", "win_rate_ci_method", "lc_win_rate",
                "lc_win_rate_note", "position_consistency", "avg_len_policy", "avg_len_baseline", "judge")
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
            "reward_mode": before["reward_mode"],
            "implicit_reward_accuracy_after": after["reward_accuracy"],
            "implicit_reward_ties_after": after["reward_ties"],
        },
        "win_rate": {key: after.get(key) for key in win_keys},
        "timings_s": {title: round(seconds, 1) for title, seconds in timings},
        "total_s": round(sum(seconds for _, seconds in timings), 1),
    }


def write_demo_report(output_dir: Path, settings, timings) -> dict:
    metrics = summarise(output_dir, settings, timings)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    _plot_training(output_dir / "training.png", metrics["training"]["curves"])
    _plot_margins(output_dir / "margins.png", _margins(output_dir / "eval-before"),
                  _margins(output_dir / "eval-after-ref-free"))
    shutil.copyfile(output_dir / "eval-after" / "win_rate.png", output_dir / "win_rate.png")
    (output_dir / "report.md").write_text(render(metrics), encoding="utf-8")
    return metrics


def _plot_training(path: Path, curves: dict) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for axis, key in zip(axes, ("loss", "rewards/margins", "rewards/accuracies")):
        axis.plot(curves["step"], curves[key], marker="o")
        axis.set_xlabel("step")
        axis.set_title(key)
    axes[0].axhline(0.6931, color="grey", linestyle="--", linewidth=1)
    save_figure(figure, path)


def _plot_margins(path: Path, before: list[float], after: list[float]) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    bins = 20
    axis.hist(before, bins=bins, alpha=0.6, label="base model")
    axis.hist(after, bins=bins, alpha=0.6, label="after DPO")
    axis.axvline(0, color="black", linewidth=1)
    axis.set_xlabel("mean per-token log-prob margin, chosen - rejected (held-out pairs)")
    axis.set_ylabel("pairs")
    axis.legend()
    save_figure(figure, path)


def render(metrics: dict) -> str:
    s, t, h, w = metrics["settings"], metrics["training"], metrics["heldout"], metrics["win_rate"]
    ci = w["win_rate_ci"]
    ci_text = f"[{percent(ci[0])}, {percent(ci[1])}]" if ci else "n/a"
    timing_rows = "\n".join(f"| {title} | {seconds} |" for title, seconds in metrics["timings_s"].items())
    return f"""# dpo demo report

Model `{s['model']}` (`smollm2` = SmolLM2-135M-Instruct), LoRA, sigmoid DPO (beta {s['beta']}, lr {s['learning_rate']}, {t['steps']} steps of
{s['batch_size']} pairs, max_length {s['max_length']}) on {s['train_pairs']} pairs of a customer's Azure OpenAI
preference file (Anthropic HH-RLHF harmless-base pairs, MIT), evaluated on {h['n_pairs']} held-out pairs.

## Training

Loss {t['first_loss']:.4f} -> {t['final_loss']:.4f} (ln 2 = 0.6931 at step 0: policy equals reference);
final batch reward margin {t['final_rewards/margins']:.4f}, reward accuracy {percent(t['final_rewards/accuracies'])}
(one training batch of {s['batch_size']} pairs: noisy).

![training](training.png)

## Held-out reward accuracy

| | base model | after DPO |
| --- | --- | --- |
| reward accuracy ({h['reward_mode']}: mean per-token log-prob, chosen > rejected; ties wrong) | {percent(h['reward_accuracy_before'])} | {percent(h['reward_accuracy_after'])} |
| mean margin | {h['mean_margin_before']:.4f} | {h['mean_margin_after']:.4f} |
| implicit DPO reward accuracy (log-ratio vs the base model; RewardBench's definition) | (0% by definition: every log-ratio is 0) | {percent(h['implicit_reward_accuracy_after'])} |

With {h['n_pairs']} pairs one pair is {100 / h['n_pairs']:.1f} points: differences of a few points are noise.

![margins](margins.png)

## Judged win-rate: tuned vs base on held-out prompts

{w['wins']} wins, {w['ties']} ties, {w['losses']} losses; win rate {percent(w['win_rate'])} (ties count half),
95% CI {ci_text} ({w['win_rate_ci_method']}); length-controlled: {percent(w['lc_win_rate'])}
({w['lc_win_rate_note'] or 'fitted'}); judge position consistency {percent(w['position_consistency'])};
mean answer length {w['avg_len_policy']:.1f} (tuned) vs {w['avg_len_baseline']:.1f} (base) characters.

{JUDGE_CAVEAT}

![win rate](win_rate.png)

## Steps

| step | seconds |
| --- | --- |
{timing_rows}
| **total** | **{metrics['total_s']}** |

Each step's own outputs are in this folder: `train/` (adapter, `trainer_state.json`), `eval-before/`,
`eval-after-ref-free/`, `eval-after/` (each with `metrics.json`, `pairs.jsonl`, `report.md`).
"""
