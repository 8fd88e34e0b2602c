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
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample \
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    bar = tqdm(total=local_share(len(prompts)), desc=desc, disable=not progress or not is_main_process(), unit="prompt")

    def complete(index):
        prompt = prompts[index]
        if isinstance(prompt, str):
            ids = tokenizer(prompt)["input_ids"]
        else:
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
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


def judge_both_orders(judge_name: str, prompts, policy_outputs, baseline_outputs, params: Mapping[str, Any] | None = None,
                      references: Sequence[str] | None = None):
    """``(metrics, per_prompt_rows)`` for the policy against the baseline under one judge."""
    from dpo_plugins.plugins import lookup_registration

    registration = lookup_registration("judge", judge_name)
    judge, provider = registration.spec, registration.provider
    settings = {**judge.params, **(params or {})}
    if "references" in judge.params and settings.get("references") is None and references is not None:
        settings["references"] = list(references)
    first = _verdicts(judge, provider, prompts, policy_outputs, baseline_outputs, settings)
    swapped = _verdicts(judge, provider, prompts, baseline_outputs, policy_outputs, settings)
    scored = is_probability(first[0]) if first else False
    if any(is_probability(v) != scored for v in (*first, *swapped)):
        raise PluginError(f"judge {judge_name!r} from {provider} mixed verdicts and probabilities; return one kind")
    metrics = win_rate_metrics(first, swapped, [len(o) for o in policy_outputs], [len(o) for o in baseline_outputs])
    shown = {k: ("<redacted>" if _secret(k) or looks_like_secret(v) else v) for k, v in settings.items()
             if k != "references"}
    metrics["judge"] = judge_name
    metrics["judge_info"] = {"name": judge_name, "provider": provider, "params": shown,
                             "orders": "both (policy first, then baseline first); verdicts: a win only when both agree; "
                                       "probabilities: averaged over the two orders"}
    outcomes = outcomes_of(first, swapped)
    rows = []
    for prompt, p, b, x, y, outcome, preference in zip(prompts, policy_outputs, baseline_outputs, first, swapped,
                                                       outcomes, combined_preferences(first, swapped)):
        row = {"prompt": prompt, "policy_output": p, "baseline_output": b, "verdict_policy_first": as_verdict(x),
               "verdict_baseline_first": as_verdict(y), "outcome": outcome, "preference": preference}
        if scored:
            row.update(p_first_better_policy_first=x, p_first_better_baseline_first=y)
        rows.append(row)
    return metrics, rows


def _secret(name: str) -> bool:
    """Parameters that may hold credentials are never written to a report."""
    lowered = name.lower()
    return any(word in lowered for word in ("key", "token", "secret", "password")) and lowered not in (
        "api_key_env", "api_key_header", "max_tokens")


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


def _verdicts(judge, provider, prompts, outputs_a, outputs_b, settings) -> list:
    try:
        verdicts = list(judge.fn(list(prompts), list(outputs_a), list(outputs_b), **settings))
    except DpoPluginsError:
        raise
    except Exception as error:
        raise PluginError(f"judge {judge.name!r} from {provider} failed: {type(error).__name__}: {error}") from error
    bad = [v for v in verdicts if not _is_judgment(v)]
    if len(verdicts) != len(prompts) or bad:
        raise PluginError(f"judge {judge.name!r} from {provider} returned {len(verdicts)} verdicts for "
                          f"{len(prompts)} prompts{f', including {bad[:3]}' if bad else ''}; expected 'a', 'b' or "
                          "'tie', or a probability in [0, 1] that a is better, each")
    return [v if isinstance(v, str) else float(v) for v in verdicts]


def _is_judgment(value) -> bool:
    """A verdict, or a finite probability that output a is better (bools are neither)."""
    if isinstance(value, str):
        return value in VERDICTS
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1
