"""Stand-ins for AlpacaEval's ``openai_completions``: an OpenAI-compatible endpoint, or a local causal LM.

AlpacaEval's annotator calls ``fn_completions(prompts=..., **completions_kwargs)`` and parses
``completions`` (the texts) or ``completions_all`` (one chat-completions ``choice`` per prompt,
logprobs included). Both functions here take the same arguments and return the same dict, so the
annotator's prompt template, completion settings and parser run unchanged:

- :func:`endpoint_completions` POSTs each prompt (AlpacaEval's ChatML template turned into
  messages by AlpacaEval's own ``prompt_to_chatml``) with the settings
  ``openai_completions`` would send (``top_p`` 1 and ``temperature`` 0.7 unless the config says
  otherwise) and keeps each ``choice`` as the server sent it, with AlpacaEval's ``text`` and
  ``total_tokens`` added. An annotator that reads logprobs gets one clear error from an
  endpoint that answers without them, instead of every preference silently missing. A prompt
  that Azure's content filter refuses (HTTP 400, ``content_filter``) gets an empty answer, as a
  filtered completion does: a counted miss, not the end of the run.
- :func:`local_completions` decodes greedily with a loaded causal LM and reports, per generated
  token, the model's own log-probabilities in the same ``logprobs.content[i].top_logprobs``
  shape: the ``top_logprobs`` most likely tokens plus the tokens the parser reads (``m`` and
  ``M`` for ``weighted_alpaca_eval_gpt4_turbo``), so a log-probability parser always finds them.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from ..errors import DpoPluginsError
from .chat_endpoint import ContentFiltered, Endpoint, post_chat

# openai_completions's arguments that configure the client, not the request (see its signature).
CLIENT_ONLY = ("is_skip_multi_tokens_to_avoid", "is_strip", "num_procs", "batch_size", "requires_chatml", "is_chat",
               "sleep_time", "client_config_path", "openai_organization_ids", "openai_api_keys", "openai_api_base",
               "client_kwargs", "n_retries", "price_per_token")
# Logit biases by OpenAI tokenizer ids (tiktoken): meaningless for another server's vocabulary.
UNSUPPORTED = ("tokens_to_favor", "tokens_to_avoid")


def messages_of(prompt: str) -> list[dict]:
    """AlpacaEval's ChatML prompt as chat messages (its own parser); any other text is one user message."""
    from alpaca_eval.utils import prompt_to_chatml

    if prompt.startswith("<|im_start|>") and prompt.endswith("<|im_end|>"):
        return prompt_to_chatml(prompt)
    return [{"role": "user", "content": prompt}]


def endpoint_completions(prompts: Sequence[str], model_name: str, max_tokens: int = 2048, *, target: Endpoint,
                         concurrency: int = 5, price_per_token: float | None = None, is_strip: bool = True,
                         top_p: float | None = 1.0, temperature: float | None = 0.7, **request_fields) -> dict:
    """``openai_completions``'s result for ``prompts`` from ``target``, up to ``concurrency`` requests at a time."""
    fields = {k: v for k, v in request_fields.items() if k not in CLIENT_ONLY}
    fields.update({k: v for k, v in (("top_p", top_p), ("temperature", temperature)) if v is not None})
    wants_logprobs = bool(fields.get("logprobs"))

    def complete(prompt: str) -> dict:
        text = prompt.strip() if is_strip else prompt
        body = {"model": model_name, "messages": messages_of(text), "max_tokens": max_tokens, **fields}
        try:
            answer = post_chat(target, body)
        except ContentFiltered:  # the prompt was refused: an empty answer, which the parser counts as a miss
            answer = {"choices": [{"finish_reason": "content_filter", "index": 0, "logprobs": None,
                                   "message": {"content": "", "role": "assistant"}}]}
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        total = usage.get("total_tokens")  # AlpacaEval divides by the prompts in the request: a float
        return _with_text(dict(answer["choices"][0]), None if total is None else total / 1, target, wants_logprobs)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, int(concurrency))) as pool:
        choices = list(pool.map(complete, prompts))
    return _result(choices, time.perf_counter() - start, price_per_token)


def _with_text(choice: dict, total_tokens, target: Endpoint, wants_logprobs: bool) -> dict:
    """AlpacaEval's ``text`` (tool-call arguments when the model called a tool) and ``total_tokens`` added."""
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    has_logprobs = isinstance(choice.get("logprobs"), dict) and choice["logprobs"].get("content")
    if wants_logprobs and content and not has_logprobs:  # an answer, but not its logprobs (an empty one is a miss)
        raise DpoPluginsError(f"{target.who}: {target.url} answered without logprobs, which this annotator's parser "
                              "reads: use an endpoint that returns logprobs and top_logprobs (OpenAI, Azure OpenAI, "
                              "vLLM and llama.cpp server do), or an annotator that parses text")
    text = " " if content == "" else content  # AlpacaEval's stand-in for an empty answer
    for key, path in (("function_call", ("arguments",)), ("tool_calls", (0, "function", "arguments"))):
        value = message.get(key)
        if value:
            try:
                for step in path:
                    value = value[step]
                text = value
            except (KeyError, IndexError, TypeError):
                pass
    choice["text"] = text
    choice["total_tokens"] = total_tokens
    return choice


def _result(choices: list[dict], seconds: float, price_per_token: float | None) -> dict:
    n = len(choices)
    price = [c["total_tokens"] * float(price_per_token) if price_per_token is not None and c["total_tokens"] is not None
             else math.nan for c in choices]
    return {"completions": [c["text"] for c in choices], "price_per_example": price,
            "time_per_example": [seconds / n] * n if n else [], "completions_all": choices}


def local_completions(prompts: Sequence[str], model_name: str | None = None, max_tokens: int = 2048, *, model,
                      tokenizer, parser_tokens: Sequence[str] = (), logprobs: bool = False,
                      top_logprobs: int | None = None, is_strip: bool = True, **ignored) -> dict:
    """``openai_completions``'s result for ``prompts`` from a loaded causal LM, decoded greedily.

    ``ignored`` holds the config's sampling settings (``temperature``, ``top_p``): greedy decoding
    makes the answer the model's most likely one, and the log-probabilities are the model's own
    (unscaled), as the chat-completions API reports them.
    """
    import torch

    always = [_single_token(tokenizer, token, model_name) for token in dict.fromkeys(parser_tokens)]
    device = next(model.parameters()).device
    choices, start = [], time.perf_counter()
    for prompt in prompts:
        messages = messages_of(prompt.strip() if is_strip else prompt)
        if tokenizer.chat_template:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
        else:
            ids = tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids], device=device),
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                                 max_new_tokens=int(max_tokens), do_sample=False, temperature=None, top_p=None,
                                 top_k=None, output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        generated = out.sequences[0, len(ids):].tolist()
        content = []
        for token_id, logits in zip(generated, out.logits):
            log_probs = torch.log_softmax(logits[0].double(), dim=-1)
            shown = log_probs.topk(int(top_logprobs or 0)).indices.tolist() if top_logprobs else []
            shown += [i for i in always if i not in shown]
            content.append({**_token_entry(tokenizer, token_id, log_probs),
                            "top_logprobs": [_token_entry(tokenizer, i, log_probs) for i in shown]})
        text = tokenizer.decode(generated, skip_special_tokens=True)
        choices.append({"finish_reason": "stop" if generated and generated[-1] == tokenizer.eos_token_id else "length",
                        "index": 0, "logprobs": {"content": content} if logprobs or always else None,
                        "message": {"content": text, "role": "assistant"}, "text": text or " ",
                        "total_tokens": len(ids) + len(generated)})
    result = _result(choices, time.perf_counter() - start, 0.0)
    return result


def _single_token(tokenizer, token: str, model_name) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise DpoPluginsError(f"judge 'alpaca-eval': the annotator's parser reads the token {token!r}, which is "
                              f"{len(ids)} tokens for the local model {model_name or ''}".rstrip())
    return ids[0]


def _token_entry(tokenizer, token_id: int, log_probs) -> dict:
    token = tokenizer.decode([token_id])
    return {"token": token, "bytes": list(token.encode("utf-8")), "logprob": float(log_probs[token_id])}
