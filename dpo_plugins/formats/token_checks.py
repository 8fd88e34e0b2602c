"""Token-level checks for ``dpo validate --model M --max-length N``.

Each pair is tokenized by :mod:`dpo_plugins.adapters.tokenization`, exactly
as TRL 1.16's ``DPOTrainer`` tokenizes it (the same code ``dpo train`` and
``dpo eval`` use). That gives the rows TRL would drop (prompt alone fills ``max_length``),
completions cut by ``keep_start`` truncation, pairs whose difference is cut
away, and chat-template boundary problems (the prompt not a token prefix of
prompt+completion, a doubled BOS, a default system prompt injected on top of
the row's own).
"""

from __future__ import annotations

from typing import Iterator, Optional

from dpo_plugins.records import ERROR, WARNING, PreferenceRecord, Problem


def _percentiles(values: list) -> dict:
    """Nearest-rank p50 / p95 and the max."""
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def rank(q):
        return ordered[max(0, -(-len(ordered) * q // 100) - 1)]

    return {"p50": rank(50), "p95": rank(95), "max": ordered[-1]}


class TokenChecks:
    """Tokenizes each record like TRL and checks it against ``max_length``."""

    def __init__(self, model: str, max_length: Optional[int], example_limit: Optional[int] = None):
        from dpo_plugins.adapters.models import load_tokenizer

        self.tokenizer = load_tokenizer(model)
        self.max_length = max_length
        self.example_limit = example_limit
        self.lengths: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
        self.dropped = 0
        self.system_header = self._system_header()

    def _system_header(self) -> Optional[str]:
        """The text the template puts before a system message's content."""
        try:
            text = self.tokenizer.apply_chat_template([{"role": "system", "content": "\x01"}], tokenize=False)
        except Exception:  # a template without a system role
            return None
        header = text.split("\x01")[0]
        bos = self.tokenizer.bos_token or ""
        if bos and header.startswith(bos) and header != bos:
            header = header[len(bos):] or header
        return header or None

    def tokenize(self, record: PreferenceRecord) -> tuple[list, list, list, bool]:
        """``(prompt_ids, chosen_ids, rejected_ids, prompt_cut)`` exactly as TRL's ``DPOTrainer`` builds them."""
        from dpo_plugins.adapters.tokenization import tokenize_pair_and_boundary

        if record.text:
            row = {key: messages[0]["content"] for key, messages in
                   (("prompt", record.prompt), ("chosen", record.chosen), ("rejected", record.rejected))}
        else:
            row = {"prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected, "tools": record.tools}
        pair, prompt_cut = tokenize_pair_and_boundary(row, self.tokenizer)
        return pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"], prompt_cut

    def check(self, record: PreferenceRecord) -> Iterator[Problem]:
        try:
            prompt, chosen, rejected, boundary = self.tokenize(record)
        except Exception as error:  # the chat template cannot render this row: training would crash on it
            yield Problem("$", f"the tokenizer's chat template cannot render this row: "
                               f"{type(error).__name__}: {error}", "template-error", ERROR)
            return
        for key, ids in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            self.lengths[key].append(len(ids))
        if boundary:
            prompt_text = record.prompt[0]["content"] if record.text else ""
            hint = " (the prompt ends with whitespace, which merges with the completion's first token)" \
                if prompt_text[-1:].isspace() else ""
            yield Problem("prompt", "the tokenized prompt is not a prefix of the tokenized prompt+completion: "
                                    f"TRL starts the completion where they diverge{hint}", "template-boundary", WARNING)
        bos = self.tokenizer.bos_token_id
        if bos is not None and prompt[:2] == [bos, bos]:
            yield Problem("prompt", "the prompt starts with two BOS tokens", "double-bos", ERROR)
        yield from self._check_system(record)
        longest = len(prompt) + max(len(chosen), len(rejected))
        if self.example_limit and longest > self.example_limit:
            yield Problem("$", f"{longest} tokens; examples hold at most {self.example_limit}", "max-tokens", ERROR)
        if self.max_length is None:
            return
        n = self.max_length
        if len(prompt) >= n:
            self.dropped += 1
            yield Problem("prompt", f"the prompt alone is {len(prompt)} tokens >= max_length {n}: "
                                    "TRL drops this row", "prompt-too-long", WARNING)
            return
        for key, ids in (("chosen", chosen), ("rejected", rejected)):
            if len(prompt) + len(ids) > n:
                yield Problem(key, f"{len(prompt) + len(ids) - n} of {len(ids)} completion tokens are cut by "
                                   f"max_length {n}", "truncated-completion", WARNING)
        if chosen != rejected and (prompt + chosen)[:n] == (prompt + rejected)[:n]:
            yield Problem("chosen", f"chosen and rejected are identical within max_length {n}: "
                                    "their difference is truncated away", "truncated-identical", ERROR)

    def _check_system(self, record: PreferenceRecord) -> Iterator[Problem]:
        if self.system_header is None or record.text:
            return
        rendered = self.tokenizer.apply_chat_template(record.prompt, tools=record.tools, tokenize=False,
                                                      add_generation_prompt=True)
        own = sum(1 for m in record.prompt if isinstance(m, dict) and m.get("role") == "system")
        found = rendered.count(self.system_header)
        if found > max(own, 1):
            yield Problem("prompt", f"the rendered prompt has {found} system sections for {own} system "
                                    "message(s): the template injects its default system prompt too",
                          "double-system", ERROR)

    def summary(self) -> dict:
        stats = {f"{key}_tokens": _percentiles(values) for key, values in self.lengths.items()}
        if self.max_length is not None:
            stats["rows_trl_drops"] = self.dropped
        return stats
