"""The one eval pipeline: tokenize and drop as TRL does, score pairs, optionally generate and judge.

Two entry points share every step: :func:`run_eval` (``dpo eval``, and so
the demo) scores one policy against its reference and writes the report;
:func:`compare_models` (``dpo anneal``'s comparison) scores several models on
the same pairs, each forward once, the reference's reused for every model.
Python users can call either, or the pieces in :mod:`.reward_accuracy`,
:mod:`.judging` and :mod:`.stats`, directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Tuple

from dpo_plugins.errors import DpoPluginsError

logger = logging.getLogger("dpo_plugins.eval")
MERGED = "merged"  # dpo anneal's name for the merged model, the baseline of its win-rate


@dataclass
class EvalRequest:
    model: str
    rows: Sequence[dict]
    ref: str | None = None
    data: str | None = None
    reward_mode: str = "dpo"
    allow_self_reference: bool = False
    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    tokenization: str = "trl"
    subsets: Sequence[str] | None = None
    batch_size: int = 8
    forward: str = "packed"
    ref_cache: bool = True
    judge: str | None = None
    judge_params: dict = field(default_factory=dict)
    baseline: str | None = None
    policy_outputs: str | None = None
    baseline_outputs: str | None = None
    max_prompts: int | None = None
    generation: dict = field(default_factory=dict)
    progress: bool = True
    judge_cache: bool = True
    judge_check: str | None = None  # human-labelled pairs to measure the judge on (dpo eval --judge-check)
    judge_check_pairs: tuple | None = None  # their (prompts, chosen, rejected), from judge_agreement.labelled_pairs


def run_eval(request: EvalRequest, report_dir) -> dict:
    """Compute every metric of ``request``, write the report, return ``metrics.json``'s content."""
    from dpo_plugins.adapters.models import load_model_and_tokenizer
    from dpo_plugins.adapters.tokenization import explicit_prompt

    from dpo_plugins.adapters.distributed import is_main_process, process_info, wait_for_everyone
    from dpo_plugins.errors import SelfReferenceError

    from .reward_accuracy import (accuracy_by_subset, check_not_self_reference, reference_free_mean_metrics,
                                  reward_metrics, score_pairs)
    from .report import write_report
    from .rewardbench_sections import section_scores

    if request.reward_mode == "dpo" and request.ref is None:
        raise DpoPluginsError("reward mode 'dpo' needs --ref (the model the policy was trained from)")
    if request.judge and not (request.baseline or request.baseline_outputs):
        raise DpoPluginsError("a win-rate needs a baseline: give --baseline, --ref or --baseline-outputs")
    if request.ref and not request.allow_self_reference and _same_path(request.model, request.ref):
        raise SelfReferenceError(f"--ref {request.ref} is the policy itself; every log-ratio would be 0 "
                                 "(pass --allow-self-reference if you mean it)")
    request.rows = [explicit_prompt(row) for row in request.rows]
    policy, tokenizer = load_model_and_tokenizer(request.model)
    policy.eval()
    reference = None
    if request.reward_mode == "dpo":
        reference, _ = load_model_and_tokenizer(request.ref)
        reference.eval()
    pairs, kept = tokenize_rows(request.rows, tokenizer, request)
    if request.tokenization == "rewardbench":  # its own truncation happened while tokenizing
        request.max_length = None
    dropped = len(request.rows) - len(pairs)
    if not pairs:
        raise DpoPluginsError(f"{request.data}: no pair left to score: all {dropped} have a prompt that fills "
                              f"--max-length {request.max_length} (raise it, or 0 for none)")
    if dropped:
        logger.warning("%d of %d pairs dropped: the prompt fills max_length %s (as TRL drops them)", dropped,
                       len(request.rows), request.max_length)
    reference_logps = None
    if reference is not None and request.ref_cache and request.forward == "packed":
        check_not_self_reference(policy, reference, request.allow_self_reference)  # before the reference's pass
        reference_logps = _cached_reference_logps(request, reference, tokenizer, pairs)
    scores = score_pairs(policy, pairs, reference=reference, reference_logps=reference_logps,
                         mode=request.reward_mode, allow_self_reference=request.allow_self_reference,
                         max_length=request.max_length, truncation_mode=request.truncation_mode,
                         batch_size=request.batch_size, progress=request.progress, forward=request.forward)
    metrics = reward_metrics(scores.chosen_scores, scores.rejected_scores)
    if request.reward_mode == "dpo":
        metrics["ref_free_mean"] = reference_free_mean_metrics(scores)
    metrics.update({
        "n_dropped": len(request.rows) - len(pairs), "reward_mode": request.reward_mode,
        "model": str(request.model), "ref": request.ref, "data": request.data,
        "max_length": request.max_length, "truncation_mode": request.truncation_mode,
        "tokenization": request.tokenization, "processes": process_info()[1],
    })
    pair_rows = [{"row": kept[i], **row} for i, row in enumerate(scores.rows())]
    if request.subsets is not None:
        for row in pair_rows:
            row["subset"] = request.subsets[row["row"]]
        metrics["subsets"] = accuracy_by_subset([r["correct"] for r in pair_rows], [r["subset"] for r in pair_rows])
        sections = section_scores({k: v["reward_accuracy"] for k, v in metrics["subsets"].items()})
        if sections is not None:
            metrics["rewardbench_sections"] = sections
    generation_rows = []
    if request.judge:
        win_metrics, generation_rows = _win_rate(request, policy, tokenizer, reference, load_model_and_tokenizer)
        metrics.update(win_metrics)
        if request.judge_check_pairs is not None and is_main_process():
            metrics["judge_check"] = _judge_check(request)
    if is_main_process():
        write_report(report_dir, metrics, pair_rows, generation_rows)
    wait_for_everyone()
    return metrics


def tokenize_rows(rows: Sequence[dict], tokenizer, request: "EvalRequest") -> tuple[list, list]:
    """``(pairs, kept)``: the rows tokenized as ``request.tokenization`` says, and the indices of those kept.

    ``trl`` drops a pair whose prompt alone fills ``max_length``, as TRL
    does; ``rewardbench`` truncates while tokenizing and drops nothing (a row
    it cannot tokenize is an error, every such row listed).
    """
    from dpo_plugins.adapters.tokenization import prompt_dropped, tokenize_pair

    if request.tokenization == "rewardbench":
        from dpo_plugins.adapters.rewardbench_tokenization import tokenize_pair_rewardbench

        pairs, problems = [], []
        for index, row in enumerate(rows):
            try:
                pairs.append(tokenize_pair_rewardbench(row, tokenizer))
            except DpoPluginsError as error:
                problems.append(f"{request.data}: row {index + 1}: {error}")
        if problems:
            raise DpoPluginsError("\n".join(problems))
        return pairs, list(range(len(rows)))
    if request.tokenization != "trl":
        raise DpoPluginsError(f"tokenization {request.tokenization!r}: expected trl or rewardbench")
    pairs, kept = [], []
    for index, row in enumerate(rows):
        pair = tokenize_pair(row, tokenizer)
        if not prompt_dropped(pair, request.max_length, request.truncation_mode):
            pairs.append(pair)
            kept.append(index)
    return pairs, kept


def _cached_reference_logps(request: EvalRequest, reference, tokenizer, pairs) -> tuple:
    """The reference's ``(chosen, rejected)`` sums through the disk cache that ``dpo train`` fills.

    The key is the tokenized pairs, the reference weights, the tokenizer and
    the truncation, so a training run's eval data, or an earlier eval of
    another policy against the same reference, is not recomputed.
    """
    from dpo_plugins.adapters.ref_cache import RefLogpsCache, make_key

    from dpo_plugins.adapters.distributed import every_process, is_main_process
    from .logps import pair_logps

    cache = RefLogpsCache()
    key = make_key(pairs, reference, tokenizer, request.max_length, request.truncation_mode)
    cached = cache.load(key, len(pairs))
    if every_process(cached is not None):  # under accelerate launch all read it, or all compute it together
        if is_main_process():
            logger.info("reference log-probs: read from the cache")
        return cached
    out = pair_logps(reference, pairs, request.max_length, request.truncation_mode, request.batch_size,
                     request.progress, "reference log-probs", forward="packed")
    if is_main_process():
        cache.store(key, out.chosen_logps, out.rejected_logps)
        logger.info("reference log-probs: computed and cached")
    return out.chosen_logps, out.rejected_logps


def adapter_base(model: str) -> str | None:
    """The base model of a PEFT adapter directory (its implicit reference, as in TRL), else ``None``."""
    import json

    config = Path(model) / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as error:
        raise DpoPluginsError(f"{config}: cannot read the adapter's base model: {error}") from None
    if not base:
        raise DpoPluginsError(f"{config}: $.base_model_name_or_path: missing; give --ref")
    return base


def _same_path(a: str, b: str) -> bool:
    from dpo_plugins.adapters.models import resolve_model

    return Path(resolve_model(a)).resolve() == Path(resolve_model(b)).resolve()


def _win_rate(request: EvalRequest, policy, tokenizer, reference, load):
    from dpo_plugins.adapters.distributed import is_main_process
    from .judging import GenerationSettings, generate, judge_both_orders, pair_outputs, prompt_key, read_outputs, unique_prompts

    settings = GenerationSettings(**request.generation)
    if request.policy_outputs:
        policy_records = read_outputs(request.policy_outputs)
    else:
        prompts = unique_prompts(request.rows)[: request.max_prompts]
        outputs = generate(policy, tokenizer, prompts, settings, request.progress, "policy generations")
        policy_records = [(f"policy generation {i}", p, o) for i, (p, o) in enumerate(zip(prompts, outputs))]
    if request.baseline_outputs:
        baseline_records = read_outputs(request.baseline_outputs)
    else:
        if reference is not None and request.baseline == request.ref:
            baseline, baseline_tokenizer = reference, tokenizer
        else:
            baseline, baseline_tokenizer = load(request.baseline)
            baseline.eval()
        prompts = [p for _, p, _ in policy_records]
        outputs = generate(baseline, baseline_tokenizer, prompts, settings, request.progress, "baseline generations")
        baseline_records = [(f"baseline generation {i}", p, o) for i, (p, o) in enumerate(zip(prompts, outputs))]
    prompts, policy_outputs, baseline_outputs = pair_outputs(
        policy_records, baseline_records, request.policy_outputs or "policy generations",
        request.baseline_outputs or "baseline generations")
    if not prompts:  # success means something was judged
        raise DpoPluginsError(f"no prompt to judge: {request.policy_outputs or 'the policy generations'} and "
                              f"{request.baseline_outputs or 'the baseline generations'} share no prompt; "
                              "nothing was written")
    references = _references(request.rows, prompt_key)
    if not is_main_process():  # generations were shared; one process judges
        return {}, []
    win_metrics, rows = judge_both_orders(request.judge, prompts, policy_outputs, baseline_outputs,
                                          request.judge_params, [references.get(prompt_key(p)) for p in prompts],
                                          cache=request.judge_cache)
    win_metrics["baseline"] = request.baseline or request.baseline_outputs
    generated = not (request.policy_outputs and request.baseline_outputs)
    win_metrics["generation"] = settings.as_dict() if generated else None
    return win_metrics, rows


def _judge_check(request: EvalRequest) -> dict:
    """The win-rate's judge (and the floors) measured on human-labelled pairs: see :mod:`.judge_agreement`."""
    from .judge_agreement import judge_check
    from .judge_report import summary

    logger.info("judge check: %s on %d human-labelled pairs from %s, both orders", request.judge,
                len(request.judge_check_pairs[0]), request.judge_check)
    result = judge_check(request.judge, *request.judge_check_pairs, request.judge_params, cache=request.judge_cache)
    return dict(summary(result), data=request.judge_check)


def _references(rows, prompt_key) -> dict:
    """Reference answer per prompt for rule judges: a row's ``reference``, else its chosen completion."""
    references = {}
    for row in rows:
        answer = row.get("reference", row["chosen"])
        if isinstance(answer, list):  # conversational: the last message's text
            answer = answer[-1].get("content", "") if answer else ""
        references.setdefault(prompt_key(row["prompt"]), answer)
    return references


# -- several models on the same pairs (dpo anneal) ------------------------------------

EVAL_KEYS = ("data", "from_format", "max_length", "batch_size", "judge", "judge_params", "max_new_tokens")


def compare_models(models: Mapping[str, Tuple[str, Path]], reference: str, reference_path: Path,
                   settings: Mapping[str, Any], rows: Sequence[dict]) -> Dict[str, Any]:
    """Every model of a merge-then-anneal run on the same held-out pairs; returns the evaluation, JSON-able.

    ``models``: name -> (role, directory); ``rows``: the held-out TRL rows of
    ``settings["data"]`` (keys: :data:`EVAL_KEYS`). Each model's log-prob sums
    are computed once; the reference's serve every model's implicit reward,
    so N models cost N forward passes, not 2N. Per model:

    - ``reward_accuracy`` against the run's DPO reference (ties wrong, as in
      RewardBench); undefined (``None``) for the reference itself, whose
      log-ratios are all zero;
    - ``ref_free_accuracy``: chosen beats rejected by mean log-prob per
      completion token (``--reward-mode ref-free-mean``), so every model,
      the reference included, is on the same footing.

    With a judge, the annealed model's generations are judged against the
    merged model's (both orders), as ``dpo eval --judge`` judges.
    """
    from dpo_plugins.adapters.models import load_model, load_tokenizer

    from .logps import pair_logps
    from .reward_accuracy import implicit_rewards, reward_metrics, scores_from

    request = EvalRequest(model=str(models["annealed"][1]), rows=rows, data=str(settings["data"]),
                          max_length=settings.get("max_length"), batch_size=settings.get("batch_size", 8),
                          judge=settings.get("judge"), judge_params=dict(settings.get("judge_params") or {}),
                          baseline=str(models[MERGED][1]), progress=False,
                          generation={"max_new_tokens": settings.get("max_new_tokens", 128)})
    pairs, _ = tokenize_rows(rows, load_tokenizer(reference_path), request)  # one tokenizer: checked before merging
    reference_path = Path(reference_path).resolve()

    def logps_of(path):
        model = load_model(path, merge_adapter=True).eval()
        try:
            return pair_logps(model, pairs, max_length=request.max_length, batch_size=request.batch_size)
        finally:
            del model

    logps = {name: logps_of(path) for name, (_, path) in models.items()}
    reference_name = next((name for name, (_, path) in models.items() if Path(path).resolve() == reference_path), None)
    reference_logps = logps[reference_name] if reference_name else logps_of(reference_path)
    rows_out, per_pair = {}, {}
    for name, (role, path) in models.items():
        own = scores_from(logps[name], "ref-free-mean")
        ref_free = reward_metrics(own.chosen_scores, own.rejected_scores)
        row = {"role": role, "path": str(path), "is_reference": name == reference_name,
               "ref_free_accuracy": ref_free["reward_accuracy"], "ref_free_mean_margin": ref_free["mean_margin"]}
        if name == reference_name:  # every log-ratio is 0: an implicit reward against itself is meaningless
            row.update(reward_accuracy=None, reward_ties=None, mean_margin=None)
        else:
            ratios = implicit_rewards(logps[name], reference_logps.chosen_logps, reference_logps.rejected_logps)
            rewards = reward_metrics(ratios.chosen_scores, ratios.rejected_scores)
            row.update({key: rewards[key] for key in ("reward_accuracy", "reward_ties", "mean_margin")})
        rows_out[name] = row
        per_pair[name] = [pair["margin"] for pair in own.rows()]
    evaluation = {
        "data": request.data, "n_pairs": len(pairs), "n_dropped": len(rows) - len(pairs), "reference": reference,
        "reference_path": str(reference_path), "models": rows_out, "per_pair": per_pair,
    }
    if request.judge:
        def load(path):
            return load_model(path, merge_adapter=True).eval(), load_tokenizer(path)

        policy, tokenizer = load(request.model)
        win_metrics, _ = _win_rate(request, policy, tokenizer, None, load)
        del policy
        evaluation["winrate"] = dict(win_metrics, policy="annealed", baseline=MERGED)
    return evaluation
