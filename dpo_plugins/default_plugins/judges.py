"""Built-in win-rate judges, registered through ``register_judges`` like any plugin's.

Each ``fn(prompts, outputs_a, outputs_b, **params)`` returns ``"a"``, ``"b"``
or ``"tie"`` per prompt for ONE order of the outputs (or, for a scoring
judge, the probability in [0, 1] that ``a`` is better); the eval harness
calls it twice with the outputs swapped. Verdicts count a win only when both
orders agree (MT-Bench), so position bias becomes ties instead of wins;
probabilities are averaged over the two orders (see ``evals.stats``).

- ``llm-pairwise``: a local causal LM reads ``PAIRWISE_TEMPLATE``. By
  default (``mode="logprob"``) it returns, per order, the probability that
  "A" is the better answer: its next-token probabilities of "A" and "B",
  renormalised over the two (the idea of AlpacaEval's log-probability
  annotators); the harness averages the two orders into one preference. A
  small judge's position bias then shifts the probabilities instead of
  turning every prompt into a tie. ``mode="verdict"`` keeps the older
  per-order verdict (the more likely letter).
- ``reward-model``: any sequence-classification model with one output; the
  higher-scored output wins.
- ``openai-compatible``: an HTTP chat-completions endpoint (vLLM, llama.cpp
  server, Ollama, Azure OpenAI, OpenAI) answering ``[[A]]``, ``[[B]]`` or
  ``[[C]]`` (tie) to ``API_TEMPLATE``, MT-Bench's convention.
- ``exact-match`` / ``regex``: rule judges for verifiable tasks; an output
  is right or wrong, and a right one beats a wrong one.
- ``longest`` / ``random``: floors, as on AlpacaEval's evaluator
  leaderboard. A judge worth using agrees with people more often than they
  do (``dpo judge-eval`` shows them next to every judge).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import os
import re
import urllib.error
import urllib.request
from typing import Sequence

from ..errors import DpoPluginsError
from ..hookspecs import hookimpl
from ..specs import Judge
from ..evals.judging import prompt_text

PAIRWISE_TEMPLATE = """Compare two responses to the same request. Judge which one is more helpful, correct and harmless; ignore length and the order in which they are shown.

[Request]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is better? Answer with one letter: A or B."""

API_TEMPLATE = PAIRWISE_TEMPLATE.rsplit("\n\n", 1)[0] + (
    '\n\nExplain briefly, then give your verdict strictly as "[[A]]" if A is better, '
    '"[[B]]" if B is better, or "[[C]]" for a tie.'
)
VERDICT_PATTERN = re.compile(r"\[\[(A|B|C)\]\]")
logger = logging.getLogger("dpo_plugins.judges")


def _need(params: dict, name: str, judge: str):
    if params.get(name) in (None, ""):
        raise DpoPluginsError(f"judge {judge!r} needs the parameter {name!r} (--judge-param {name}=...)")
    return params[name]


def _compare(score_a: float, score_b: float, margin: float = 0.0) -> str:
    return "a" if score_a - score_b > margin else "b" if score_b - score_a > margin else "tie"


@functools.lru_cache(maxsize=4)
def causal_lm(name_or_path: str):
    """A causal LM in eval mode and its tokenizer: the model behind llm-pairwise and alpaca-eval's local_model."""
    from dpo_plugins.adapters.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(name_or_path)
    return model.eval(), tokenizer


JUDGE_MODES = ("logprob", "verdict")


def next_token_logits(model, ids: Sequence[int]):
    """The float32 logits of the token that follows ``ids``.

    Only the last position goes through the LM head (``logits_to_keep=1``, as
    ``generate`` does for its first token): on SmolLM2-135M the head is ~20% of
    a judge call. The hidden states are the full forward's; the one logits row
    differs from the full forward's last row only by float rounding (the
    matrix product has another shape): measured max 2.5e-5 on logits of ~20.
    A model whose ``forward`` has no ``logits_to_keep`` gets the full forward.
    """
    import torch

    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    input_ids = torch.tensor([list(ids)], device=next(model.parameters()).device)
    with torch.no_grad():
        return model(input_ids=input_ids, **keep).logits[0, -1].float()


def llm_pairwise(prompts, outputs_a, outputs_b, model="smollm2", mode="logprob", tie_margin=0.0, **params):
    """Local LM judge on the first answer token.

    ``logprob``: P("A") / (P("A") + P("B")) per prompt, the probability that
    ``a`` is better. ``verdict``: whichever letter's log-probability is
    higher by more than ``tie_margin`` nats, else a tie.
    """
    import torch

    if mode not in JUDGE_MODES:
        raise DpoPluginsError(f"judge 'llm-pairwise': mode must be one of {', '.join(JUDGE_MODES)}, not {mode!r}")

    judge_model, tokenizer = causal_lm(str(model))
    letters = []
    for letter in ("A", "B"):
        ids = tokenizer.encode(letter, add_special_tokens=False)
        if len(ids) != 1:
            raise DpoPluginsError(f"judge 'llm-pairwise': {letter!r} is not a single token for {model!r}")
        letters.append(ids[0])
    verdicts = []
    for prompt, a, b in zip(prompts, outputs_a, outputs_b):
        text = PAIRWISE_TEMPLATE.format(prompt=prompt_text(prompt), a=a, b=b)
        if tokenizer.chat_template:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True, return_dict=True)["input_ids"]
        else:
            ids = tokenizer(text + "\nAnswer:")["input_ids"]
        logits = next_token_logits(judge_model, ids)
        if mode == "logprob":  # softmax over the two labels only: the rest of the vocabulary cancels
            verdicts.append(torch.softmax(logits[letters].double(), dim=-1)[0].item())
            continue
        log_probs = torch.log_softmax(logits, dim=-1)
        verdicts.append(_compare(log_probs[letters[0]].item(), log_probs[letters[1]].item(), float(tie_margin)))
    return verdicts


@functools.lru_cache(maxsize=4)
def _reward_model(name_or_path: str):
    from dpo_plugins.adapters.models import load_model, load_tokenizer

    model = load_model(name_or_path, auto_class="AutoModelForSequenceClassification").eval()
    if model.config.num_labels != 1:
        raise DpoPluginsError(
            f"judge 'reward-model': {name_or_path} has {model.config.num_labels} outputs; a reward model has one"
        )
    return model, load_tokenizer(name_or_path)


def reward_model(prompts, outputs_a, outputs_b, model=None, tie_margin=0.0, probability=False, **params):
    """Score prompt + output with a one-output sequence classifier; the higher score wins.

    With ``probability`` it returns sigmoid(score_a - score_b), the
    Bradley-Terry probability that a is better, as a continuous preference.
    """
    scores = [_reward_scores(str(_need({"model": model}, "model", "reward-model")), prompts, outputs)
              for outputs in (outputs_a, outputs_b)]
    if probability:
        return [1 / (1 + math.exp(-(a - b))) if a - b >= 0 else math.exp(a - b) / (1 + math.exp(a - b))
                for a, b in zip(*scores)]
    return [_compare(a, b, float(tie_margin)) for a, b in zip(*scores)]


def _reward_scores(model_name: str, prompts, outputs) -> list[float]:
    import torch

    model, tokenizer = _reward_model(model_name)
    texts = []
    for prompt, output in zip(prompts, outputs):
        if isinstance(prompt, list) and tokenizer.chat_template:
            texts.append(tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": output}], tokenize=False))
        else:
            texts.append(prompt_text(prompt) + output)
    scores = []
    for text in texts:  # one unpadded row each: padding can never leak into a score
        with torch.no_grad():
            scores.append(model(**tokenizer(text, return_tensors="pt")).logits[0, 0].float().item())
    return scores


def openai_compatible(prompts, outputs_a, outputs_b, base_url=None, model=None, api_key_env="OPENAI_API_KEY",
                      api_key_header="Authorization", temperature=0.0, max_tokens=256, timeout=60.0, **params):
    """POST ``{base_url}/chat/completions`` once per prompt and read ``[[A]]`` / ``[[B]]`` / ``[[C]]``."""
    url = str(_need({"base_url": base_url}, "base_url", "openai-compatible")).rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(str(api_key_env), "") if api_key_env else ""
    if key:
        headers[str(api_key_header)] = f"Bearer {key}" if api_key_header == "Authorization" else key
    verdicts, unparsed = [], 0
    for prompt, a, b in zip(prompts, outputs_a, outputs_b):
        body = {"messages": [{"role": "user", "content": API_TEMPLATE.format(prompt=prompt_text(prompt), a=a, b=b)}],
                "temperature": float(temperature), "max_tokens": int(max_tokens)}
        if model:
            body["model"] = str(model)
        reply = _post_json(url, body, headers, float(timeout))
        try:
            content = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise DpoPluginsError(f"judge 'openai-compatible': {url} answered without choices[0].message.content: "
                                  f"{json.dumps(reply)[:200]}") from None
        found = VERDICT_PATTERN.findall(content)
        if not found:
            unparsed += 1
        verdicts.append({"A": "a", "B": "b"}.get(found[-1], "tie") if found else "tie")
    if unparsed:
        logger.warning("judge 'openai-compatible': %d of %d replies had no [[A]]/[[B]]/[[C]] verdict; counted as ties",
                       unparsed, len(verdicts))
    return verdicts


def _post_json(url: str, body: dict, headers: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")[:300]
        raise DpoPluginsError(f"judge 'openai-compatible': {url} returned HTTP {error.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise DpoPluginsError(f"judge 'openai-compatible': cannot reach {url}: {error}") from None
    except json.JSONDecodeError as error:
        raise DpoPluginsError(f"judge 'openai-compatible': {url} did not answer JSON: {error}") from None


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def _rule_verdicts(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> list[str]:
    return ["a" if x and not y else "b" if y and not x else "tie" for x, y in zip(correct_a, correct_b)]


def exact_match(prompts, outputs_a, outputs_b, references=None, normalise=True, **params):
    """Right means equal to the prompt's reference answer (whitespace and case folded by default)."""
    references = _need({"references": references}, "references", "exact-match")
    same = (lambda x, y: _normalise(x) == _normalise(y)) if normalise else (lambda x, y: x == y)
    return _rule_verdicts([same(o, r) for o, r in zip(outputs_a, references)],
                          [same(o, r) for o, r in zip(outputs_b, references)])


def regex(prompts, outputs_a, outputs_b, pattern=None, references=None, **params):
    """Right means ``pattern`` matches; with a capture group and references, group 1 must equal the reference."""
    try:
        compiled = re.compile(str(_need({"pattern": pattern}, "pattern", "regex")))
    except re.error as error:
        raise DpoPluginsError(f"judge 'regex': bad pattern {pattern!r}: {error}") from None

    def right(output, reference):
        match = compiled.search(output)
        if match is None:
            return False
        if reference is None or not compiled.groups:
            return True
        return _normalise(match.group(1) or "") == _normalise(reference)

    refs = references if references is not None else [None] * len(outputs_a)
    return _rule_verdicts([right(o, r) for o, r in zip(outputs_a, refs)], [right(o, r) for o, r in zip(outputs_b, refs)])


def longest(prompts, outputs_a, outputs_b, **params):
    """AlpacaEval's ``longest`` annotator: ``a`` when it has more characters than ``b``, otherwise ``b``.

    Its rule exactly (``alpaca_eval.analyze._get_longest_predictor``: output_1
    only when strictly longer), so two answers of equal length go to the one
    shown second; judged in both orders such a pair becomes a tie.
    """
    return ["a" if len(a) > len(b) else "b" for a, b in zip(outputs_a, outputs_b)]


def random_judge(prompts, outputs_a, outputs_b, seed=0, **params):
    """A fair coin per comparison, seeded: the same texts and seed always get the same verdict.

    The coin is a bit of SHA-256 over (seed, prompt, a, b), so a verdict
    depends on nothing else (not the order of the pairs, not the batch).
    """
    verdicts = []
    for prompt, a, b in zip(prompts, outputs_a, outputs_b):
        digest = hashlib.sha256(json.dumps([seed, prompt_text(prompt), a, b], ensure_ascii=False).encode()).digest()
        verdicts.append("a" if digest[0] & 1 else "b")
    return verdicts


FLOOR_JUDGES = ("longest", "random")


@hookimpl
def register_judges():
    yield Judge(name="llm-pairwise", fn=llm_pairwise, params={"model": "smollm2", "mode": "logprob", "tie_margin": 0.0},
                description="local causal LM: P('A') vs P('B') under PAIRWISE_TEMPLATE, averaged over both orders")
    yield Judge(name="reward-model", fn=reward_model, params={"model": None, "tie_margin": 0.0, "probability": False},
                description="sequence-classification reward model; the higher score wins")
    yield Judge(name="openai-compatible", fn=openai_compatible,
                params={"base_url": None, "model": None, "api_key_env": "OPENAI_API_KEY",
                        "api_key_header": "Authorization", "temperature": 0.0, "max_tokens": 256, "timeout": 60.0},
                description="HTTP chat-completions judge answering [[A]]/[[B]]/[[C]] (MT-Bench style)")
    yield Judge(name="exact-match", fn=exact_match, params={"references": None, "normalise": True}, cache=False,
                description="right = equals the reference answer")
    yield Judge(name="regex", fn=regex, params={"pattern": None, "references": None}, cache=False,
                description="right = the pattern matches (group 1 equals the reference, if given)")
    yield Judge(name="longest", fn=longest, cache=False,
                description="floor: the longer output (AlpacaEval's `longest`; equal lengths: the second shown)")
    yield Judge(name="random", fn=random_judge, params={"seed": 0}, cache=False,
                description="floor: a fair coin per comparison, seeded by --judge-param seed=N")
