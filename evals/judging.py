"""Win-rate: generate from the policy and a baseline, judge both orders, count.

The judge (any ``register_judges`` plugin) sees (policy, baseline) as (a, b)
and then (baseline, policy); :mod:`.stats` turns the two verdicts per prompt
into a win, loss or tie (a win only when both orders agree) and an AlpacaEval
preference (a judge may return the probability that a is better instead of a
verdict: the preference is then continuous), and computes the statistics. Outputs may also come from files (one JSON object per line with
``prompt`` and ``output``), paired by prompt with strict guards.
"""

from __future__ import annotations

import json
import numbers
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from dpo_plugins.errors import DpoPluginsError, PluginError

from .stats import as_verdict, combined_preferences, is_probability, outcomes_of, win_rate_metrics

VERDICTS = ("a", "b", "tie")


@dataclass(frozen=True)
class GenerationSettings:
    """Greedy by default; with ``do_sample`` each prompt is seeded ``seed + index``."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def prompt_text(prompt: Any) -> str:
    """A prompt (string or chat messages) as plain text for a judge."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{message['role'].capitalize()}: {message.get('content') or ''}" for message in prompt)


def prompt_key(prompt: Any) -> str:
    """A hashable identity for a prompt (a string, or chat messages)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def unique_prompts(rows: Sequence[Mapping[str, Any]]) -> list:
    """The distinct prompts of TRL rows, in first-seen order."""
    seen, prompts = set(), []
    for row in rows:
        key = prompt_key(row["prompt"])
        if key not in seen:
            seen.add(key)
            prompts.append(row["prompt"])
    return prompts


def generate(model, tokenizer, prompts: Sequence[Any], settings: GenerationSettings = GenerationSettings(),
             progress: bool = False, desc: str = "generating") -> list[str]:
    """One completion per prompt, one unpadded prompt at a time (results never depend on batching)."""
    import torch
    from tqdm.auto import tqdm

    from dpo_plugins.adapters.distributed import is_main_process, local_share, map_shared

    device = next(model.parameters()).device
    sampling = sampling_kwargs(settings)
    bar = tqdm(total=local_share(len(prompts)), desc=desc, disable=not progress or not is_main_process(), unit="prompt")

    def complete(index):
        ids = prompt_ids(tokenizer, prompts[index])
        torch.manual_seed(settings.seed + index)
        with torch.no_grad():
            generated = model.generate(input_ids=torch.tensor([ids], device=device),
                                       attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                                       max_new_tokens=settings.max_new_tokens,
                                       pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **sampling)
        bar.update(1)
        return tokenizer.decode(generated[0, len(ids):], skip_special_tokens=True).strip()

    outputs = map_shared(range(len(prompts)), complete)  # split under accelerate launch
    bar.close()
    return outputs


def sampling_kwargs(settings: GenerationSettings) -> dict:
    """``generate``'s decoding arguments for ``settings``: sampling, or plain greedy."""
    if settings.do_sample:
        return {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def prompt_ids(tokenizer, prompt: Any) -> list[int]:
    """The token ids a model continues from: a string as is, chat messages through the template."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]


def read_outputs(path) -> list[tuple[str, Any, str]]:
    """``(location, prompt, output)`` per line of a JSONL outputs file; every bad line listed."""
    records, problems = [], []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(f"{where}: $: not valid JSON: {error.msg}")
                continue
            if not isinstance(row, dict):
                problems.append(f"{where}: $: expected an object with prompt and output")
                continue
            line_problems = [
                f"{where}: $.{field}: missing or not a {' or '.join(kind.__name__ for kind in kinds)}"
                for field, kinds in (("prompt", (str, list)), ("output", (str,)))
                if not isinstance(row.get(field), kinds)
            ]
            problems.extend(line_problems)
            if not line_problems:
                records.append((where, row["prompt"], row["output"]))
    if problems:
        raise DpoPluginsError("\n".join(problems))
    return records


def pair_outputs(policy: Sequence[tuple[str, Any, str]], baseline: Sequence[tuple[str, Any, str]],
                 policy_name: str = "policy outputs", baseline_name: str = "baseline outputs"):
    """``(prompts, policy_outputs, baseline_outputs)`` matched by prompt.

    A prompt given twice on one side, or present on one side only, is an
    error (every such prompt listed): silently dropping or double-counting
    prompts would bias the win rate.
    """
    problems = []
    indexed = []
    for records, name, other_name in ((policy, policy_name, baseline_name), (baseline, baseline_name, policy_name)):
        by_key = {}
        for where, prompt, output in records:
            key = prompt_key(prompt)
            if key in by_key:
                problems.append(f"{where}: $.prompt: duplicate prompt (first at {by_key[key][0]})")
            else:
                by_key[key] = (where, prompt, output)
        indexed.append(by_key)
    for side, other, other_name in ((indexed[0], indexed[1], baseline_name), (indexed[1], indexed[0], policy_name)):
        for key, (where, _, _) in side.items():
            if key not in other:
                problems.append(f"{where}: $.prompt: prompt missing from the {other_name}")
    if problems:
        raise DpoPluginsError("\n".join(problems))
    keys = list(indexed[0])
    return ([indexed[0][k][1] for k in keys], [indexed[0][k][2] for k in keys], [indexed[1][k][2] for k in keys])


def check_judge_params(judge_name: str, params: Mapping[str, Any] | None = None):
    """The judge's ``(spec, provider)``; an unknown judge or parameter is an error naming what it accepts.

    Commands call it before any model loads. ``Judge.params`` lists every
    parameter a judge accepts (with its default).
    """
    from dpo_plugins.plugins import lookup_registration

    registration = lookup_registration("judge", judge_name)
    judge = registration.spec
    unknown = sorted(set(params or {}) - set(judge.params))
    if unknown:
        accepted = ", ".join(sorted(judge.params)) or "none"
        raise DpoPluginsError(f"judge {judge_name!r} ({registration.provider}) has no parameter "
                              f"{', '.join(map(repr, unknown))}; it accepts: {accepted}")
    return judge, registration.provider


@dataclass
class OrderAnswers:
    """One order's answers, one per comparison: the judgment (``None``: the judge could not judge it), the
    seconds it took, the tokens the judge reported, and whether it came from the cache."""

    judgments: list
    seconds: list
    prompt_tokens: list
    completion_tokens: list
    cached: list


def judge_orders(judge_name: str, prompts, outputs_a, outputs_b, params: Mapping[str, Any] | None = None,
                 references: Sequence[str] | None = None, cache: bool = True):
    """``(settings, provider, (a, b) answers, (b, a) answers)``: the judge on both orders of every comparison.

    The one place judges are called. With ``cache`` (and a judge whose
    ``Judge.cache`` is true) answers are read from and written to
    :class:`.judge_cache.JudgeCache`, so only comparisons never judged
    before reach the judge.
    """
    judge, provider = check_judge_params(judge_name, params)
    settings = {**judge.params, **(params or {})}
    if "references" in judge.params and settings.get("references") is None and references is not None:
        settings["references"] = list(references)
    store = None
    if cache and judge.cache:
        from .judge_cache import JudgeCache

        store = JudgeCache()
    first = _verdicts(judge, provider, prompts, outputs_a, outputs_b, settings, store)
    swapped = _verdicts(judge, provider, prompts, outputs_b, outputs_a, settings, store)
    scored = [is_probability(v) for v in (*first.judgments, *swapped.judgments) if v is not None]
    if scored and any(s != scored[0] for s in scored):
        raise PluginError(f"judge {judge_name!r} from {provider} mixed verdicts and probabilities; return one kind")
    return settings, provider, first, swapped


def judge_both_orders(judge_name: str, prompts, policy_outputs, baseline_outputs, params: Mapping[str, Any] | None = None,
                      references: Sequence[str] | None = None, cache: bool = True):
    """``(metrics, per_prompt_rows)`` for the policy against the baseline under one judge.

    A prompt the judge could not judge in either order (``None``) counts in
    ``n_null`` and in no rate, as AlpacaEval's null preferences.
    """
    settings, provider, first_answers, swapped_answers = judge_orders(
        judge_name, prompts, policy_outputs, baseline_outputs, params, references, cache)
    first, swapped = first_answers.judgments, swapped_answers.judgments
    judged = [i for i, (x, y) in enumerate(zip(first, swapped)) if x is not None and y is not None]
    scored = any(is_probability(first[i]) for i in judged)
    metrics = win_rate_metrics([first[i] for i in judged], [swapped[i] for i in judged],
                               [len(policy_outputs[i]) for i in judged], [len(baseline_outputs[i]) for i in judged])
    metrics["n_null"] = len(prompts) - len(judged)
    metrics["judge"] = judge_name
    metrics["judge_info"] = {"name": judge_name, "provider": provider, "params": public_params(settings),
                             "orders": "both (policy first, then baseline first); verdicts: a win only when both agree; "
                                       "probabilities: averaged over the two orders",
                             "answers_from_cache": sum(first_answers.cached) + sum(swapped_answers.cached)}
    outcomes = dict(zip(judged, outcomes_of([first[i] for i in judged], [swapped[i] for i in judged])))
    preferences = dict(zip(judged, combined_preferences([first[i] for i in judged], [swapped[i] for i in judged])))
    rows = []
    for i, (prompt, p, b, x, y) in enumerate(zip(prompts, policy_outputs, baseline_outputs, first, swapped)):
        row = {"prompt": prompt, "policy_output": p, "baseline_output": b,
               "verdict_policy_first": None if x is None else as_verdict(x),
               "verdict_baseline_first": None if y is None else as_verdict(y),
               "outcome": outcomes.get(i), "preference": preferences.get(i)}
        if scored:
            row.update(p_first_better_policy_first=x, p_first_better_baseline_first=y)
        rows.append(row)
    return metrics, rows


def public_params(settings: Mapping[str, Any]) -> dict:
    """A judge's settings as a report may show them: credentials redacted, per-prompt references left out."""
    return {k: ("<redacted>" if _secret(k) or looks_like_secret(v) else v) for k, v in settings.items()
            if k != "references"}


def _secret(name: str) -> bool:
    """Parameters that may hold credentials are never written to a report."""
    lowered = name.lower()
    return any(word in lowered for word in ("key", "token", "secret", "password")) and lowered not in (
        "api_key_env", "api_key_header", "max_tokens", "price_per_token")


_SECRET_VALUE = re.compile(r"(?i)^\s*(bearer|basic|token)\s+\S{8,}|^(sk|pk|rk|ghp|gho|ghs|xox[abpr]|hf|AKIA|AIza)"
                           r"[-_A-Za-z0-9]{10,}|^eyJ[-_A-Za-z0-9]{10,}\.")


def looks_like_secret(value) -> bool:
    """A value shaped like a credential (a bearer token, a provider's key prefix, a JWT, or a long run of
    letters and digits mixed) is redacted whatever its parameter is called: a typo'd name must not leak it."""
    if not isinstance(value, str):
        return False
    if _SECRET_VALUE.search(value):
        return True
    word = value.strip()
    return (len(word) >= 32 and re.fullmatch(r"[A-Za-z0-9_\-+/=]+", word) is not None and not word.startswith("/")
            and re.search(r"\d", word) is not None and re.search(r"[A-Za-z]", word) is not None
            and word.count("-") + word.count("_") <= len(word) / 8)


def _verdicts(judge, provider, prompts, outputs_a, outputs_b, settings, store=None) -> OrderAnswers:
    """One order's answers: cached ones read, the others from one call of the judge on just those."""
    import time

    from .judge_cache import answer_key, judge_identity

    n = len(prompts)
    references = settings.get("references")
    per_item = isinstance(references, (list, tuple)) and len(references) == n
    answers: list = [None] * n
    keys = [None] * n
    if store is not None:
        identity = judge_identity(judge.name, provider, settings)
        for i in range(n):
            keys[i] = answer_key(identity, prompt_text(prompts[i]), outputs_a[i], outputs_b[i],
                                 references[i] if per_item else None)
            answers[i] = store.load(keys[i])
    missing = [i for i in range(n) if answers[i] is None]
    cached = [answers[i] is not None for i in range(n)]
    if missing:
        call = dict(settings)
        if per_item:
            call["references"] = [references[i] for i in missing]
        started = time.perf_counter()
        try:
            returned = list(judge.fn([prompts[i] for i in missing], [outputs_a[i] for i in missing],
                                     [outputs_b[i] for i in missing], **call))
        except DpoPluginsError:
            raise
        except Exception as error:
            raise PluginError(f"judge {judge.name!r} from {provider} failed: {type(error).__name__}: {error}") from error
        seconds = (time.perf_counter() - started) / len(missing)
        parsed = [_answer(value, seconds) for value in returned]
        bad = [v for v, a in zip(returned, parsed) if a is False]
        if len(returned) != len(missing) or bad:
            raise PluginError(f"judge {judge.name!r} from {provider} returned {len(returned)} verdicts for "
                              f"{len(missing)} prompts{f', including {bad[:3]}' if bad else ''}; expected 'a', 'b' "
                              "or 'tie', a probability in [0, 1] that a is better, or None (could not judge), each")
        for i, answer in zip(missing, parsed):
            answers[i] = answer
            if store is not None:
                store.store(keys[i], answer)
    return OrderAnswers([a.judgment for a in answers], [a.seconds for a in answers],
                        [a.prompt_tokens for a in answers], [a.completion_tokens for a in answers], cached)


def _answer(value, seconds: float):
    """A judge's answer for one comparison as a :class:`CachedAnswer`, or ``False`` when it breaks the contract.

    An answer is a judgment (verdict, probability or ``None``) or a mapping
    ``{"judgment": ..., "prompt_tokens": N, "completion_tokens": M}``.
    """
    from .judge_cache import CachedAnswer

    tokens = {}
    if isinstance(value, Mapping):
        tokens = {k: value.get(k) for k in ("prompt_tokens", "completion_tokens")}
        if any(t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0) for t in tokens.values()):
            return False
        value = value.get("judgment")
    if value is not None and not _is_judgment(value):
        return False
    return CachedAnswer(value if value is None or isinstance(value, str) else float(value), seconds, **tokens)


def _is_judgment(value) -> bool:
    """A verdict, or a finite probability that output a is better (bools are neither)."""
    if isinstance(value, str):
        return value in VERDICTS
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1
