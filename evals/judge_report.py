"""``dpo judge-eval``'s outputs: the console table, and metrics.json, annotations.json, report.md and a plot.

The judge's row comes first and the floors (``longest``, ``random``) below
it, so a reader sees at once whether the judge beats them. The folder is
built beside its target and renamed into place only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from dpo_plugins.atomic import atomic_directory

from .report import _num, agreement_text, annotator_table, percent, pyplot, save_figure

PLOT = "agreement.png"
TABLE_COLUMNS = (("annotator", 18), ("Human agreement [95% CI]", 28), ("prefer longer", 13), ("prefer lists", 12),
                 ("prefer 1", 8), ("# parsed", 8), ("consistency", 11), ("s/1000", 8), ("$/1000", 8))


def _cells(name: str, columns: Mapping[str, Any]) -> list[str]:
    return [name, agreement_text(columns), _num(columns["Proba. prefer longer"]),
            _num(columns["Proba. prefer lists"]), _num(columns["Proba. prefer 1"]), str(columns["# parsed"]),
            percent(columns["position consistency"]), _num(columns["Time [seconds/1000 examples]"], 1),
            _num(columns["Price [$/1000 examples]"], 4)]


def render_table(result: Mapping[str, Any]) -> str:
    """The console table: one row per annotator, AlpacaEval's columns (shortened headers)."""
    lines = ["  ".join(title.ljust(width) for title, width in TABLE_COLUMNS)]
    for name, columns in result["annotators"].items():
        label = name if name == result["judge"] else f"{name} (floor)"
        lines.append("  ".join(cell.ljust(width) for cell, (_, width) in zip(_cells(label, columns), TABLE_COLUMNS)))
    lines.append(f"{result['n_pairs']} human-labelled pairs, each judged in both orders ({result['n_annotations']} "
                 "annotations). Human agreement: AlpacaEval's definition against each pair's one human label; "
                 "see report.md or docs/evals.md.")
    return "\n".join(lines)


def summary(result: Mapping[str, Any]) -> dict:
    """``metrics.json``: everything but the annotations."""
    return {key: value for key, value in result.items() if key != "annotations"}


def write_judge_report(report_dir, result: Mapping[str, Any], command: str = "dpo judge-eval") -> list[Path]:
    """Write metrics.json, annotations.json (AlpacaEval's layout plus ``human_preference``), report.md, the plot."""
    report_dir = Path(report_dir)
    with atomic_directory(report_dir, replace=True, command=command) as building:
        (building / "metrics.json").write_text(json.dumps(summary(result), indent=2, allow_nan=False) + "\n",
                                               encoding="utf-8")
        (building / "annotations.json").write_text(
            json.dumps(result["annotations"], indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
        plot_agreement(building / PLOT, result)
        (building / "report.md").write_text(render_markdown(result), encoding="utf-8")
    return [report_dir / name for name in ("metrics.json", "annotations.json", "report.md", PLOT)]


def plot_agreement(path: Path, result: Mapping[str, Any]) -> None:
    """Human agreement with its 95% interval per annotator, and the first-position preference."""
    plt = pyplot()
    names = list(result["annotators"])
    rows = [result["annotators"][name] for name in names]
    figure, (agreement, position) = plt.subplots(1, 2, figsize=(4 + 1.6 * len(names), 4),
                                                 gridspec_kw={"width_ratios": [3, 2]})
    values = [r["Human agreement"] or 0 for r in rows]
    errors = [[v - (r["Human agreement 95% CI"] or [v, v])[0] for v, r in zip(values, rows)],
              [(r["Human agreement 95% CI"] or [v, v])[1] - v for v, r in zip(values, rows)]]
    colors = ["#4c72b0" if name == result["judge"] else "#8c8c8c" for name in names]
    agreement.bar(names, values, yerr=errors, capsize=6, color=colors)
    agreement.axhline(50, color="black", linewidth=1, linestyle="--")
    agreement.set_ylim(0, 100)
    agreement.set_ylabel("human agreement, % (95% CI)")
    agreement.set_title(f"{result['n_pairs']} human-labelled pairs")
    position.bar(names, [r["Proba. prefer 1"] or 0 for r in rows], color=colors)
    position.axhline(0.5, color="black", linewidth=1, linestyle="--")
    position.set_ylim(0, 1)
    position.set_title("Proba. prefer 1\n(0.5 = no position bias)")
    save_figure(figure, path)


def render_markdown(result: Mapping[str, Any]) -> str:
    judge = result["judge"]
    columns = result["annotators"][judge]
    lines = ["# dpo judge-eval report", "",
             f"Judge `{judge}` ({columns['provider']}) on {result['n_pairs']} human-labelled pairs from "
             f"`{result.get('data')}`, each judged in both orders ({result['n_annotations']} annotations), next to "
             "the floor judges (`longest`: AlpacaEval's, always the longer output; `random`: a seeded coin).", "",
             f"**Human agreement of `{judge}`: {agreement_text(columns)}.**", "", *annotator_table(result)]
    lines += ["", f"Judge settings: `{json.dumps(result.get('judge_params') or {}, sort_keys=True)}`.", "",
              "## Definitions", ""]
    lines += [f"- **{name}**: {text}." for name, text in result["definitions"].items()]
    lines += ["", f"![human agreement]({PLOT})", ""]
    return "\n".join(lines)
