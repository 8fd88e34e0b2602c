"""Evaluate every model of a merge-then-anneal run on the same held-out pairs.

Each model's per-pair completion log-probs are computed once (the evals
package's ``pair_logps``, tokenized exactly as TRL does); the reference's
log-probs are reused for every model's implicit reward, so N models cost N
forward passes over the data, not 2N. With a judge, the annealed model's
generations are judged against the merged model's (both orders).

Then :func:`write_report` writes the comparison ``dpo anneal`` ends with
(metrics.json, report.md, plots) from the evaluation of every model (each
parent, the merged model, the annealed model) on the same held-out pairs:

- ``reward_accuracy`` against the run's DPO reference (implicit reward
  ``sum log pi_model - sum log pi_ref`` over completion tokens; ties count
  as wrong, as in RewardBench). It is undefined (``None``) for the
  reference itself, whose log-ratios are all zero;
- ``ref_free_accuracy``: chosen beats rejected by mean log-prob per
  completion token, with no reference, so every model (the reference
  included) is on the same footing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from dpo_plugins.atomic import write_text
from dpo_plugins.evals.report import percent, pyplot, save_figure

EVAL_KEYS = ("data", "from_format", "max_length", "batch_size", "judge", "judge_params", "max_new_tokens")


def evaluate(models: Mapping[str, Tuple[str, Path]], reference: str, reference_path: Path,
             settings: Mapping[str, Any], rows: Sequence[dict]) -> Dict[str, Any]:
    """``models``: name -> (role, directory); ``rows``: the held-out TRL rows of ``settings["data"]``.
    Returns the evaluation, JSON-able."""
    from dpo_plugins.adapters.models import load_tokenizer
    from dpo_plugins.adapters.tokenization import prompt_dropped, tokenize_pair
    from dpo_plugins.evals.logps import pair_logps
    max_length = settings.get("max_length")
    tokenizer = load_tokenizer(reference_path)  # every model shares it: checked before merging
    pairs = [tokenize_pair(row, tokenizer) for row in rows]
    kept = [pair for pair in pairs if not prompt_dropped(pair, max_length)]
    reference_path = Path(reference_path).resolve()

    def logps_of(path):
        model = load_for_eval(path)
        try:
            return pair_logps(model, kept, max_length=max_length, batch_size=settings.get("batch_size", 8))
        finally:
            del model

    logps = {name: logps_of(path) for name, (role, path) in models.items()}
    reference_name = next((name for name, (_, path) in models.items() if Path(path).resolve() == reference_path), None)
    reference_logps = logps[reference_name] if reference_name else logps_of(reference_path)

    rows_out, per_pair = {}, {}
    for name, (role, path) in models.items():
        rows_out[name] = _model_metrics(role, path, logps[name], reference_logps, name == reference_name)
        mine = logps[name]
        per_pair[name] = _floats(mine.chosen / mine.chosen_lengths - mine.rejected / mine.rejected_lengths)
    evaluation = {
        "data": str(settings["data"]),
        "n_pairs": len(kept),
        "n_dropped": len(pairs) - len(kept),
        "reference": reference,
        "reference_path": str(reference_path),
        "models": rows_out,
        "per_pair": per_pair,
    }
    if settings.get("judge"):
        evaluation["winrate"] = _winrate(models["annealed"][1], models["merged"][1], rows, settings)
    return evaluation


def _model_metrics(role, path, mine, reference, is_reference: bool) -> Dict[str, Any]:
    from dpo_plugins.evals.reward_accuracy import reward_metrics

    ref_free = reward_metrics(_floats(mine.chosen / mine.chosen_lengths), _floats(mine.rejected / mine.rejected_lengths))
    row = {"role": role, "path": str(path), "is_reference": is_reference,
           "ref_free_accuracy": ref_free["reward_accuracy"], "ref_free_mean_margin": ref_free["mean_margin"]}
    if is_reference:  # every log-ratio is 0: an implicit reward against itself is meaningless
        return dict(row, reward_accuracy=None, reward_ties=None, mean_margin=None)
    rewards = reward_metrics(_floats(mine.chosen - reference.chosen), _floats(mine.rejected - reference.rejected))
    return dict(row, reward_accuracy=rewards["reward_accuracy"], reward_ties=rewards["reward_ties"],
                mean_margin=rewards["mean_margin"])


def _floats(tensor) -> list:
    from dpo_plugins.evals.reward_accuracy import finite_or_none

    return [finite_or_none(x) for x in tensor.tolist()]


def load_for_eval(path):
    """A causal LM on CPU in float32 (a LoRA output is loaded onto its base and merged)."""
    from dpo_plugins.adapters.models import load_model

    return load_model(path, merge_adapter=True).eval()


def _winrate(policy_path: Path, baseline_path: Path, rows, settings) -> Dict[str, Any]:
    """The annealed model (policy) against the merged model (baseline), judged in both orders."""
    from dpo_plugins.adapters.models import load_tokenizer
    from dpo_plugins.evals.judging import GenerationSettings, generate, judge_both_orders, unique_prompts

    prompts = unique_prompts(rows)
    generation = GenerationSettings(max_new_tokens=settings.get("max_new_tokens", 128))
    outputs = []
    for path in (policy_path, baseline_path):
        model, tokenizer = load_for_eval(path), load_tokenizer(path)
        outputs.append(generate(model, tokenizer, prompts, generation))
        del model
    metrics, _ = judge_both_orders(settings["judge"], prompts, outputs[0], outputs[1], settings.get("judge_params"))
    return dict(metrics, policy="annealed", baseline="merged")


# -- the report -------------------------------------------------------------------

PLOTS = ("reward_accuracy.png", "margins.png")


def write_report(evaluation: Mapping[str, Any], directory: Path) -> Dict[str, Path]:
    """Write metrics.json, report.md and the plots into ``directory``."""
    directory = Path(directory)
    metrics = {key: value for key, value in evaluation.items() if key != "per_pair"}
    write_text(directory / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_text(directory / "report.md", render_markdown(metrics))
    _plot_accuracy(metrics, directory / PLOTS[0])
    _plot_margins(evaluation, directory / PLOTS[1])
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
