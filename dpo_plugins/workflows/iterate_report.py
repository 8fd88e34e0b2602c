"""``dpo iterate``'s report: metrics.json, report.md and a plot across rounds, rewritten after every round.

Intervals are 95%: the judge's mean score is a normal interval over the
round's samples (:func:`~dpo_plugins.evals.stats.mean_interval`), reward
accuracy and win-rate are Wilson intervals. Two rounds' figures "differ" here
only when their intervals do not overlap: a conservative reading, stated as
such in the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from dpo_plugins.atomic import write_text
from dpo_plugins.evals.report import percent, pyplot, save_figure

PLOT = "rounds.png"


def write_report(out: Path, rounds: Sequence[dict], settings) -> None:
    """Write ``out/metrics.json``, ``out/report.md`` and ``out/rounds.png`` from the finished rounds."""
    write_text(out / "metrics.json", json.dumps({"rounds": list(rounds)}, indent=2, allow_nan=False) + "\n")
    _plot(out / PLOT, rounds)
    write_text(out / "report.md", render_markdown(rounds, settings))


def _interval(values: Optional[Sequence[float]], as_percent: bool = False) -> str:
    if not values:
        return "n/a"
    show = percent if as_percent else (lambda v: f"{v:.4f}")
    return f"{show(values[0])} – {show(values[1])}"


def _overlap(a, b) -> Optional[bool]:
    if not a or not b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def render_markdown(rounds: Sequence[dict], settings) -> str:
    options = settings.options
    judge = (f"DICE (implicit reward of the policy against its reference, beta {settings.beta})"
             if options.judge == "dice" else f"`{options.judge}` ({options.judge_mode})")
    lines = [
        "# dpo iterate", "",
        f"{len(rounds)} round(s) of {len(settings.prompts)} prompts x K = {options.samples_per_prompt} samples "
        f"(temperature {options.temperature}, top-p {options.top_p}, at most {options.max_new_tokens} new tokens, "
        f"seed {options.seed}), judged by {judge}, paired by `{options.pair_builder}`, reference: "
        f"{options.reference}. Initial model: `{options.model}`. Held-out reward accuracy: the implicit reward "
        f"against {f'`{options.eval_ref}`' if options.eval_ref else 'each round’s training reference'}"
        f"{f' on `{options.eval_data}`' if options.eval_data else ' (no --eval-data: not measured)'}.", "",
        "## Time per phase (seconds)", "",
        "| round | generation | judging | pairs | training | evaluation | tokens/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rounds:
        speed = r["generate"].get("tokens_per_second")
        times = " | ".join(f"{r[p]['seconds']:.1f}" for p in ("generate", "judge", "pairs", "train", "eval"))
        lines.append(f"| {r['round']} | {times} | {f'{speed:.1f}' if speed else 'n/a'} |")
    lines += ["", "## Per round", "",
              "| round | pairs built | dropped (ties) | mean judge score | 95% interval | held-out reward accuracy "
              "| 95% interval | win-rate vs initial | 95% interval |",
              "| ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | --- |"]
    for r in rounds:
        judged, evaluated = r["judge"], r["eval"]
        lines.append(
            f"| {r['round']} | {r['pairs']['built']} | {r['pairs']['dropped']} | {judged['mean_score']:.4f} | "
            f"{_interval(judged['mean_score_ci'])} | {percent(evaluated.get('reward_accuracy'))} | "
            f"{_interval(evaluated.get('reward_accuracy_ci'), True)} | {percent(evaluated.get('win_rate'))} | "
            f"{_interval(evaluated.get('win_rate_ci'), True)} |")
    lines += ["", f"![across rounds]({PLOT})", ""]
    if len(rounds) > 1:
        lines += ["## Across rounds", ""]
        for key, name in (("reward_accuracy_ci", "held-out reward accuracy"), ("win_rate_ci", "win-rate")):
            for earlier, later in zip(rounds, rounds[1:]):
                overlap = _overlap(earlier["eval"].get(key), later["eval"].get(key))
                if overlap is not None:
                    verdict = ("the intervals overlap: the change does not clear its interval" if overlap
                               else "the intervals do not overlap: the change clears its interval")
                    lines.append(f"- {name}, round {earlier['round']} -> {later['round']}: {verdict}.")
        lines += ["- The mean judge score is comparable across rounds only for a fixed judge; under DICE each "
                  "round's scorer is that round's policy, so its scale moves with the policy.", ""]
    lines += ["Each round's prompts, samples, scores and pairs are in `round-N/` (pairs in HF format, the judge "
              "and pair rule in each row's `dpo_metadata`); its held-out evaluation in `round-N/eval/`.", ""]
    return "\n".join(lines)


def _plot(path: Path, rounds: Sequence[dict]) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    numbers = [r["round"] for r in rounds]
    for axis, phase, key, label in ((axes[0], "judge", "mean_score", "mean judge score"),
                                    (axes[1], "eval", "reward_accuracy", "held-out reward accuracy")):
        points = [(n, r[phase].get(key), r[phase].get(f"{key}_ci")) for n, r in zip(numbers, rounds)
                  if r[phase].get(key) is not None]
        if points:
            xs, ys, cis = zip(*points)
            errors = [[y - (ci[0] if ci else y) for y, ci in zip(ys, cis)], [(ci[1] if ci else y) - y for y, ci in zip(ys, cis)]]
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=4)
        axis.set_xlabel("round")
        axis.set_ylabel(label)
        axis.set_xticks(numbers)
        axis.set_title(f"{label} (95% interval)")
    save_figure(figure, path)
