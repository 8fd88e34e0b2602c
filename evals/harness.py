"""One eval run end to end: load, score pairs, optionally generate and judge, report.

``dpo eval`` is a thin wrapper around :func:`run_eval`; Python users can
call it (or the pieces in :mod:`.reward_accuracy`, :mod:`.winrate`,
:mod:`.stats`) directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dpo_plugins.errors import DpoPluginsError

logger = logging.getLogger("dpo_plugins.eval")


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


def run_eval(request: EvalRequest, report_dir) -> dict:
    """Compute every metric of ``request``, write the report, return ``metrics.json``'s content."""
    from dpo_plugins.adapters.models import load_model_and_tokenizer
    from dpo_plugins.adapters.tokenization import explicit_prompt, prompt_dropped, tokenize_pair

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
    if request.tokenization == "rewardbench":  # its own truncation happens while tokenizing; it drops nothing
        from dpo_plugins.adapters.rewardbench_tokenization import tokenize_pair_rewardbench

        request.max_length = None
        pairs, kept, problems = [], list(range(len(request.rows))), []
        for index, row in enumerate(request.rows):
            try:
                pairs.append(tokenize_pair_rewardbench(row, tokenizer))
            except DpoPluginsError as error:
                problems.append(f"{request.data}: row {index + 1}: {error}")
        if problems:
            raise DpoPluginsError("\n".join(problems))
    elif request.tokenization != "trl":
        raise DpoPluginsError(f"tokenization {request.tokenization!r}: expected trl or rewardbench")
    else:
        pairs, kept = [], []
        for index, row in enumerate(request.rows):
            pair = tokenize_pair(row, tokenizer)
            if not prompt_dropped(pair, request.max_length, request.truncation_mode):
                pairs.append(pair)
                kept.append(index)
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
    if is_main_process():
        write_report(report_dir, metrics, pair_rows, generation_rows)
    wait_for_everyone()
    return metrics


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
        cache.store(key, out.chosen, out.rejected)
        logger.info("reference log-probs: computed and cached")
    return out.chosen, out.rejected


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
    from .winrate import GenerationSettings, generate, judge_both_orders, pair_outputs, prompt_key, read_outputs, unique_prompts

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
                                          request.judge_params, [references.get(prompt_key(p)) for p in prompts])
    win_metrics["baseline"] = request.baseline or request.baseline_outputs
    generated = not (request.policy_outputs and request.baseline_outputs)
    win_metrics["generation"] = settings.as_dict() if generated else None
    return win_metrics, rows


def _references(rows, prompt_key) -> dict:
    """Reference answer per prompt for rule judges: a row's ``reference``, else its chosen completion."""
    references = {}
    for row in rows:
        answer = row.get("reference", row["chosen"])
        if isinstance(answer, list):  # conversational: the last message's text
            answer = answer[-1].get("content", "") if answer else ""
        references.setdefault(prompt_key(row["prompt"]), answer)
    return references
