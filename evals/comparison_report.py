"""The comparison ``dpo anneal`` ends with: metrics.json, report.md and plots.

It reports :func:`~.pipeline.compare_models`'s evaluation of every model
(each parent, the merged model, the annealed model) on the same held-out
pairs: reward accuracy against the run's DPO reference, and the
reference-free accuracy every model can be compared on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

from .report import dump_json, percent, publish_report, pyplot, save_figure

PLOTS = ("reward_accuracy.png", "margins.png")


def write_report(evaluation: Mapping[str, Any], directory: Path) -> Dict[str, Path]:
    """Write metrics.json, report.md and the plots into ``directory``."""
    directory = Path(directory)
    metrics = {key: value for key, value in evaluation.items() if key != "per_pair"}

    def render(folder: Path) -> None:
        dump_json(folder / "metrics.json", metrics)
        (folder / "report.md").write_text(render_markdown(metrics), encoding="utf-8")
        _plot_accuracy(metrics, folder / PLOTS[0])
        _plot_margins(evaluation, folder / PLOTS[1])

    publish_report(directory, render)
    return {"metrics": directory / "metrics.json", "report": directory / "report.md",
            **{name.removesuffix(".png"): directory / name for name in PLOTS}}


def _number(value) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def render_markdown(metrics: Mapping[str, Any]) -> str:
    models: Mapping[str, Mapping[str, Any]] = metrics["models"]
    reference = metrics["reference"]
    lines = [
        "# Merge, then anneal: comparison",
        "",
        f"Held-out pairs: {metrics['n_pairs']} ({metrics['data']}"
        + (f"; {metrics['n_dropped']} more dropped, as TRL drops them: their prompt alone fills max_length"
           if metrics.get("n_dropped") else "")
        + f"). DPO reference: **{reference}** (`{metrics['reference_path']}`).",
        "",
        "| model | role | reward accuracy vs reference | ties | mean margin | reference-free accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in models.items():
        accuracy = "(the reference)" if row["is_reference"] else percent(row["reward_accuracy"])
        ties = "" if row["is_reference"] else str(row["reward_ties"])
        lines.append(f"| {name} | {row['role']} | {accuracy} | {ties} | {_number(row['mean_margin'])} | "
                     f"{percent(row['ref_free_accuracy'])} |")
    merged, annealed = models.get("merged"), models.get("annealed")
    lines += ["", "## Merged vs annealed", ""]
    if merged and annealed:
        lines.append(_comparison(merged, annealed, "reward accuracy vs reference", "reward_accuracy"))
        lines.append(_comparison(merged, annealed, "reference-free accuracy", "ref_free_accuracy"))
    if metrics.get("winrate"):
        winrate = metrics["winrate"]
        lines.append(f"- judge {winrate.get('judge')}: annealed wins {percent(winrate.get('win_rate'))} of "
                     f"comparisons against merged (CI {winrate.get('win_rate_ci')})")
    lines += [
        "",
        "Reward accuracy counts a pair correct only when the chosen completion's implicit reward is strictly "
        "greater (ties are wrong). The reference-free accuracy compares mean log-probs per completion token.",
        "",
        "![reward accuracy](reward_accuracy.png)",
        "",
        "![per-pair margins](margins.png)",
        "",
    ]
    return "\n".join(lines)


def _comparison(merged: Mapping, annealed: Mapping, label: str, key: str) -> str:
    before, after = merged.get(key), annealed.get(key)
    if before is None or after is None:
        return f"- {label}: merged {percent(before)}, annealed {percent(after)}"
    return f"- {label}: merged {percent(before)} -> annealed {percent(after)} ({100 * (after - before):+.1f} points)"


def _plot_accuracy(metrics: Mapping[str, Any], path: Path) -> None:
    plt = pyplot()

    names = list(metrics["models"])
    rows = [metrics["models"][name] for name in names]
    positions = range(len(names))
    figure, axes = plt.subplots(figsize=(1.8 * len(names) + 2, 3.5))
    width = 0.38
    axes.bar([p - width / 2 for p in positions], [r["reward_accuracy"] or 0 for r in rows], width,
             label=f"vs reference ({metrics['reference']})")
    axes.bar([p + width / 2 for p in positions], [r["ref_free_accuracy"] or 0 for r in rows], width,
             label="reference-free")
    axes.set_xticks(list(positions), names)
    axes.set_ylim(0, 1.2)
    axes.set_yticks([0, 0.25, 0.5, 0.75, 1])
    axes.set_ylabel("accuracy")
    axes.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axes.legend(loc="upper center", ncol=2, fontsize="small")
    axes.set_title(f"Reward accuracy on {metrics['n_pairs']} held-out pairs")
    save_figure(figure, path)


def _plot_margins(evaluation: Mapping[str, Any], path: Path) -> None:
    plt = pyplot()

    margins: Dict[str, List[float]] = evaluation.get("per_pair", {})
    names = [name for name, values in margins.items() if values]
    figure, axes = plt.subplots(figsize=(1.8 * max(len(names), 1) + 2, 3.5))
    if names:
        axes.boxplot([margins[name] for name in names], tick_labels=names)
    axes.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_ylabel("chosen - rejected, mean log-prob per token")
    axes.set_title("Reference-free margin per pair")
    save_figure(figure, path)
