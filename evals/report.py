"""Every report this project writes goes through :func:`publish_report`; and ``dpo eval``'s own report.

``dpo eval`` writes metrics.json, pairs.jsonl, generations.jsonl, report.md,
PNG plots, and with a judge AlpacaEval's model_outputs.json and
annotations.json; ``dpo anneal``'s comparison (:mod:`.comparison_report`)
and the demo's summary render their own files through the same writer.

Everything is rendered into a temporary directory next to the report
directory first and moved into place only when complete, so a failure
leaves no half-written report; ``dpo eval``'s folder is replaced whole, so a
re-run into an earlier report folder (which ``check_output`` allowed: empty,
or marked as ours) leaves none of the earlier run's files (an old
``generations.jsonl``) beside the new ones. JSON is written with
``allow_nan=False``: a NaN can never appear as a number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from dpo_plugins.atomic import atomic_file, check_output, discard, mark, publish, staging_folder

MARGIN_PLOT = "margin_histogram.png"
WINRATE_PLOT = "win_rate.png"


def publish_report(report_dir, render: Callable[[Path], None], command: Optional[str] = None) -> list[Path]:
    """The one way a report is written: ``render(folder)`` fills a staging folder beside ``report_dir``,
    then each file moves into ``report_dir`` (created if missing); return their paths.

    A failure while rendering leaves ``report_dir`` as it was. With
    ``command`` the folder is that command's own output (``dpo eval``'s
    report): it is checked by the output-safety rule, marked, and replaced
    whole, so no earlier run's file (an old ``generations.jsonl``) stays
    beside this run's. Without, the files join a folder the caller owns
    already (the demo's and ``dpo anneal``'s output folders).
    """
    report_dir = check_output(report_dir, folder=True) if command else Path(report_dir)
    staging = staging_folder(report_dir)
    try:
        if command:
            mark(staging, command)
        render(staging)
        written = [report_dir / path.name for path in sorted(staging.iterdir())]
        if command:
            publish(staging, report_dir)
            return written
        report_dir.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            publish(path, report_dir / path.name)
        return written
    finally:
        discard(staging)


def write_report(report_dir, metrics: Mapping[str, Any], pair_rows: Sequence[Mapping] = (),
                 generation_rows: Sequence[Mapping] = ()) -> list[Path]:
    """``dpo eval``'s report files in ``report_dir``; return their paths."""

    def render(folder: Path) -> None:
        dump_json(folder / "metrics.json", metrics)
        dump_jsonl(folder / "pairs.jsonl", pair_rows)
        if generation_rows:
            from .annotations import export_judgments

            dump_jsonl(folder / "generations.jsonl", generation_rows)
            export_judgments(folder, generation_rows, metrics)  # model_outputs.json, annotations.json
        plots = []
        if pair_rows and metrics.get("n_pairs"):
            plots.append(_margin_histogram(folder / MARGIN_PLOT, pair_rows, metrics))
        if metrics.get("win_rate") is not None:
            plots.append(_win_rate_bars(folder / WINRATE_PLOT, metrics))
        (folder / "report.md").write_text(render_markdown(metrics, [p.name for p in plots if p]), encoding="utf-8")

    return publish_report(report_dir, render, command="dpo eval")


def dump_json(path: Path, value) -> None:
    """JSON with no NaN ever written as a number (``allow_nan=False``)."""
    path.write_text(json.dumps(value, indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")


def dump_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, allow_nan=False, ensure_ascii=False) + "\n")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display here or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> None:
    """Lay out ``figure``, write it to ``path`` as PNG atomically, and free it."""
    plt = pyplot()
    try:
        figure.tight_layout()
        with atomic_file(path) as temporary:
            figure.savefig(temporary, dpi=100, format="png")
    finally:
        plt.close(figure)


def _margin_histogram(path: Path, pair_rows, metrics) -> Path | None:
    margins = [row["margin"] for row in pair_rows if row.get("margin") is not None]
    if not margins:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(margins, bins=min(40, max(5, len(margins) // 2)), color="#4c72b0")
    axis.axvline(0, color="black", linewidth=1)
    label = "log-ratio margin (chosen - rejected)" if metrics.get("reward_mode") == "dpo" else "score margin (chosen - rejected)"
    axis.set_xlabel(label)
    axis.set_ylabel("pairs")
    axis.set_title(f"reward accuracy {percent(metrics.get('reward_accuracy'))} over {metrics.get('n_pairs')} pairs")
    save_figure(figure, path)
    return path


def _win_rate_bars(path: Path, metrics) -> Path:
    plt = pyplot()
    n = metrics["wins"] + metrics["losses"] + metrics["ties"]
    figure, (counts, rate) = plt.subplots(1, 2, figsize=(8, 4), gridspec_kw={"width_ratios": [3, 1]})
    counts.bar(["win", "tie", "loss"], [metrics["wins"] / n, metrics["ties"] / n, metrics["losses"] / n],
               color=["#55a868", "#8c8c8c", "#c44e52"])
    counts.set_ylabel("share of prompts")
    counts.set_title(f"policy vs baseline, {n} prompts, judge {metrics.get('judge')}")
    low, high = metrics["win_rate_ci"]
    value = (metrics["wins"] + metrics["ties"] / 2) / n  # the verdicts' rate, which the Wilson interval is about
    rate.bar(["win rate"], [value], yerr=[[value - low], [high - value]], capsize=8, color="#4c72b0")
    rate.axhline(0.5, color="black", linewidth=1, linestyle="--")
    rate.set_ylim(0, 1)
    rate.set_title("95% CI (Wilson)")
    save_figure(figure, path)
    return path


def percent(value) -> str:
    """A fraction as ``12.3%`` (``n/a`` for None)."""
    return "n/a" if value is None else f"{100 * value:.1f}%"



def markdown_text(value) -> str:
    """``value`` as Markdown text that cannot change the document's structure, whatever the data held.

    Control characters (a newline ends a table row) become visible escapes;
    Markdown's punctuation (``|`` splits a cell, ``#``, ``*``, ``[`` ...) is
    backslash-escaped, so a subset named ``a | b`` stays one cell.
    """
    return re.sub(r"([\\`*_{}\[\]<>()#+\-.!|~])", r"\\\1", _visible(value))


def markdown_code(value) -> str:
    """``value`` as an inline code span, fenced by more backticks than it holds, on one line."""
    text = _visible(value)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{fence}{padded}{fence}"


def _visible(value) -> str:
    """``str(value)`` with control characters as escapes (a newline cannot end a line of the report)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(value))


def _num(value, digits=4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_markdown(metrics: Mapping[str, Any], plots: Sequence[str]) -> str:
    """A short human-readable summary; definitions live in docs/evals.md."""
    lines = ["# dpo eval report", ""]
    lines += [f"- policy: {markdown_code(metrics.get('model'))}", f"- reference: {markdown_code(metrics.get('ref'))}",
              f"- data: {markdown_code(metrics.get('data'))}", ""]
    lines += ["## Reward accuracy", "",
              f"Mode `{metrics.get('reward_mode')}`; a pair counts only if the chosen reward is strictly higher "
              "(ties count as wrong, as RewardBench).", "",
              "| metric | value |", "|---|---|",
              f"| pairs | {metrics.get('n_pairs')} |",
              f"| reward accuracy | {percent(metrics.get('reward_accuracy'))} |",
              f"| ties | {metrics.get('reward_ties')} |",
              f"| mean margin | {_num(metrics.get('mean_margin'))} |",
              f"| pairs dropped (prompt fills max_length, as TRL) | {metrics.get('n_dropped', 0)} |",
              f"| tokenization | {metrics.get('tokenization', 'trl')} |", ""]
    if metrics.get("subsets"):
        lines += ["| subset | pairs | reward accuracy |", "|---|---|---|"]
        lines += [f"| {markdown_text(name)} | {v['n_pairs']} | {percent(v['reward_accuracy'])} |"
                  for name, v in metrics["subsets"].items()]
        lines += [f"| RewardBench section {markdown_text(name)} | | {percent(value)} |"
                  for name, value in (metrics.get("rewardbench_sections") or {}).items()] + [""]
    if metrics.get("win_rate") is not None:
        ci = metrics["win_rate_ci"]
        lines += ["## Win rate", "",
                  f"Judge `{metrics.get('judge')}` ({metrics['judge_info']['provider']}), both orders; "
                  "a win only when both orders agree.", "",
                  "| metric | value |", "|---|---|",
                  f"| wins / ties / losses | {metrics['wins']} / {metrics['ties']} / {metrics['losses']} |",
                  f"| win rate (AlpacaEval: mean preference, ties half) | {percent(metrics['win_rate'])} "
                  f"± {percent(metrics.get('standard_error'))} (s.e.) |",
                  f"| discrete win rate (AlpacaEval) | {percent(metrics.get('discrete_win_rate'))} |",
                  f"| 95% CI ({metrics['win_rate_ci_method']}) | {percent(ci[0])} – {percent(ci[1])} |",
                  f"| length-controlled win rate ({metrics.get('lc_method')}) | {percent(metrics.get('lc_win_rate'))} |",
                  f"| judge position consistency | {percent(metrics.get('position_consistency'))} |",
                  f"| mean length policy / baseline (chars) | {_num(metrics.get('avg_len_policy'), 1)} / "
                  f"{_num(metrics.get('avg_len_baseline'), 1)} |", "",
                  f"Length control: {metrics.get('lc_win_rate_note')}.", "",
                  f"Judge settings: `{json.dumps(metrics['judge_info']['params'], sort_keys=True)}`; "
                  f"generation: `{json.dumps(metrics.get('generation'), sort_keys=True)}`.", ""]
    if metrics.get("judge_check"):
        lines += judge_check_section(metrics["judge_check"])
    for plot in plots:
        lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines)


# -- a judge against human labels (dpo judge-eval, dpo eval --judge-check) --


def agreement_text(columns: Mapping[str, Any]) -> str:
    """``61.5% (95% CI 55.0%-68.0%)`` from one annotator's columns."""
    value, ci = columns["Human agreement"], columns["Human agreement 95% CI"]
    if value is None:
        return "n/a (nothing parsed)"
    return f"{value:.1f}% (95% CI {ci[0]:.1f}%-{ci[1]:.1f}%)"


def annotator_table(result: Mapping[str, Any]) -> list[str]:
    """Markdown table lines: one row per annotator (the judge, then the floors), AlpacaEval's columns."""
    judge = result["judge"]
    header = ["annotator", "Human agreement", "95% CI", "Proba. prefer longer", "Proba. prefer lists",
              "Proba. prefer 1", "# parsed", "position consistency", "Time [seconds/1000 examples]",
              "Price [$/1000 examples]", "answers from cache"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in result["annotators"].items():
        ci = row["Human agreement 95% CI"]
        lines.append("| " + " | ".join([
            name if name == judge else f"{name} (floor)", _num(row["Human agreement"], 2),
            f"{ci[0]:.2f}–{ci[1]:.2f}" if ci else "n/a", _num(row["Proba. prefer longer"]),
            _num(row["Proba. prefer lists"]), _num(row["Proba. prefer 1"]), str(row["# parsed"]),
            percent(row["position consistency"]), _num(row["Time [seconds/1000 examples]"], 1),
            _num(row["Price [$/1000 examples]"], 4), str(row["answers from cache"])]) + " |")
    return lines


def judge_check_section(check: Mapping[str, Any]) -> list[str]:
    """``dpo eval --judge-check``'s part of report.md: how far the win-rate's judge agrees with people."""
    return ["## Judge check", "",
            f"The judge `{check['judge']}` on {check['n_pairs']} human-labelled pairs from `{check.get('data')}` "
            f"(both orders), next to the floors: human agreement "
            f"**{agreement_text(check['annotators'][check['judge']])}**. A win-rate from a judge that does not beat "
            "`longest` and `random` here says little about quality. Definitions: docs/evals.md (Choosing a judge).",
            "", *annotator_table(check), ""]
