"""The ``alpaca-eval`` judge against a real chat-completions server on 127.0.0.1 and AlpacaEval's own code.

The server replays fixed replies (the reply for a request is chosen by the instruction it names, so
two clients asking the same prompt get the same reply whatever the order of their requests) and
speaks the protocol's ``logprobs`` / ``top_logprobs``. Its choices carry every field the ``openai``
SDK's models have, as OpenAI's own answers do, so AlpacaEval's ``model_dump()`` of a choice equals
the JSON sent and the two annotators' raw completions can be compared as they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import build_tiny_model
from dpo_plugins.default_plugins import alpaca_eval_judge
from dpo_plugins.default_plugins.alpaca_eval_judge import annotate
from dpo_plugins.errors import DpoPluginsError
from dpo_plugins.evals.judging import judge_both_orders

INSTRUCTIONS = ["Name a prime number.", "What is the capital of Italy?", "Say hi.", "Tell a joke.",
                "Explain rain in one line.", "Give me a colour.", "Count to three.", "Spell 'cat'."]
OUTPUTS_1 = ["7", "Rome", "hi", "Why did the chicken cross the road?", "Water falls from clouds.", "blue", "1 2 3", "c-a-t"]
OUTPUTS_2 = ["8", "Milan", "hello there!", "No.", "Clouds condense vapour until drops fall.", "blue", "one, two, three", ""]

# (chosen token, logprob of "m", logprob of "M"); None: neither token in top_logprobs (unparsable)
LOGPROB_REPLIES = [("m", -0.105, -2.302), ("M", -3.0, -0.051), ("M", -0.916, -0.511), ("m", -0.223, -1.609),
                   ("M", None, None), ("m", -0.693, -0.693)]
TEXT_REPLIES = {"chatgpt": ["Output (a)", "Output (b)", "I cannot tell.", "Output (b) is better", ""],
                "alpaca_eval_gpt4": ["[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]",
                                     "[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]",
                                     "I prefer the first."]}


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "bytes": list(token.encode()), "logprob": logprob}


class ChatServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible ``/chat/completions`` that replays fixed replies; ``mode`` scripts failures."""

    requests: list = []
    mode = "logprobs"  # logprobs | no-logprobs | text:<annotator> | fail:<status>:<times> | not-json
    failures_left = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = type(self)
        server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        if server.mode.startswith("fail:"):
            _, status, times = server.mode.split(":")
            if server.failures_left < 0 or server.failures_left > 0:
                server.failures_left -= 1 if server.failures_left > 0 else 0
                return self._send(int(status), {"error": {"message": "slow down" if status == "429" else "boom"}},
                                  {"Retry-After": "0"} if status == "429" else {})
        if server.mode == "not-json":
            return self._send(200, None, raw=b"<html>proxy error</html>")
        if server.mode == "filtered-400" and "joke" in json.dumps(body["messages"]):  # Azure refusing the prompt
            return self._send(400, {"error": {"code": "content_filter", "status": 400, "message": "The response was "
                                              "filtered due to the prompt triggering content management policy."}})
        if server.mode == "filtered":  # Azure's content filter: an empty answer, no logprobs
            return self._send(200, {"choices": [{"finish_reason": "content_filter", "index": 0, "logprobs": None,
                                                 "message": {"content": "", "role": "assistant"}}]})
        text = json.dumps(body["messages"])
        digest = next((i for i, instruction in enumerate(INSTRUCTIONS) if json.dumps(instruction)[1:-1] in text),
                      int(hashlib.sha256(text.encode()).hexdigest(), 16))
        logprobs = None
        if server.mode.startswith("text:"):
            replies = TEXT_REPLIES[server.mode.split(":", 1)[1]]
            content = replies[digest % len(replies)]
        else:
            token, m, big_m = LOGPROB_REPLIES[digest % len(LOGPROB_REPLIES)]
            content = token
            top = [_entry("m", m), _entry("M", big_m)] if m is not None else [_entry("Both", -0.4)]
            top += [_entry("The", -6.5), _entry("Based", -7.25)]
            top.sort(key=lambda e: -e["logprob"])
            if server.mode != "no-logprobs":
                logprobs = {"content": [{**_entry(token, m if token == "m" else big_m if big_m is not None else -0.4),
                                         "top_logprobs": top}], "refusal": None}
        choice = {"finish_reason": "length", "index": 0, "logprobs": logprobs,
                  "message": {"content": content, "refusal": None, "role": "assistant", "annotations": None,
                              "audio": None, "function_call": None, "tool_calls": None}}
        prompt_tokens = len(json.dumps(body["messages"])) // 4
        self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
                         "model": body.get("model"), "choices": [choice],
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1,
                                   "total_tokens": prompt_tokens + 1}})

    def _send(self, status, payload, headers=None, raw=None):
        type(self).requests[-1]["reply"] = payload
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    """``(root URL, handler class)``; the OpenAI-style base URL is ``root + '/v1'``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatServer)
    ChatServer.requests, ChatServer.mode, ChatServer.failures_left = [], "logprobs", 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", ChatServer
    finally:
        server.shutdown()
        server.server_close()


def _alpaca_evals_own(annotator: str, root: str, tmp_path: Path, price_per_token: float):
    """AlpacaEval's PairwiseAnnotator with its own ``openai_completions`` (the openai SDK) on the same server."""
    from alpaca_eval.annotators import PairwiseAnnotator

    clients = tmp_path / "openai_configs.yaml"
    clients.write_text(json.dumps({"default": [{"api_key": "sk-test", "base_url": f"{root}/v1"}]}))
    cache = tmp_path / "alpaca_eval_annotations.json"
    annotator_obj = PairwiseAnnotator(annotators_config=annotator, caching_path=cache, is_randomize_output_order=False)
    rows = [{"instruction": i, "output_1": a, "output_2": b} for i, a, b in zip(INSTRUCTIONS, OUTPUTS_1, OUTPUTS_2)]
    records = annotator_obj.annotate_pairs(rows, client_config_path=clients, price_per_token=price_per_token)
    return json.loads(json.dumps(records, default=str).replace("NaN", "null")), json.loads(cache.read_text())


def _rounded(value):
    """Floats to 9 significant digits, the precision pandas' ``to_json`` keeps, everywhere in ``value``."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return float(f"{value:.9g}") if isinstance(value, float) else value


MEASURED = ("preference_time_per_example", "preference_date")  # a clock and a stopwatch: never equal across runs


@pytest.mark.parametrize("annotator, mode", [("weighted_alpaca_eval_gpt4_turbo", "logprobs"),
                                             ("chatgpt", "text:chatgpt"),
                                             ("alpaca_eval_gpt4", "text:alpaca_eval_gpt4")])
def test_annotations_equal_alpaca_evals_pairwise_annotator(chat_server, tmp_path, annotator, mode):
    root, server = chat_server
    server.mode = mode
    ours_path = tmp_path / "ours.json"
    ours = annotate(INSTRUCTIONS, OUTPUTS_1, OUTPUTS_2, annotator, base_url=f"{root}/v1", price_per_token=1e-5,
                    annotations=ours_path)
    our_requests = [r["body"] for r in server.requests]
    server.requests.clear()
    theirs, their_file = _alpaca_evals_own(annotator, root, tmp_path, 1e-5)
    their_requests = [r["body"] for r in server.requests]

    # the same requests (the SDK sends them in any order: compare as sets), and the same records
    canonical = lambda bodies: sorted(json.dumps(b, sort_keys=True) for b in bodies)  # noqa: E731
    assert canonical(our_requests) == canonical(their_requests)
    assert len(our_requests) == 7  # the pair with identical outputs is 1.5 without a request, as in AlpacaEval
    strip = lambda rows: [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]  # noqa: E731
    assert strip(ours) == strip(theirs)
    assert json.loads(ours_path.read_text()) == ours
    # AlpacaEval's own file (pandas, 10 significant digits) stores a failed annotation as -1, its cache marker
    assert _rounded(strip(ours)) == _rounded([{**r, "preference": None if r["preference"] == -1 else r["preference"]}
                                              for r in strip(their_file)])
    assert ours[5]["preference"] == 1.5  # identical outputs
    parsed = [r["preference"] for r in ours]
    assert any(p is None for p in parsed) and any(p is not None and p not in (1.5,) for p in parsed)


def test_parsed_preferences_equal_alpaca_evals_parser_on_the_replies(chat_server):
    import math

    from alpaca_eval import completion_parsers

    root, server = chat_server
    records = annotate(INSTRUCTIONS, OUTPUTS_1, OUTPUTS_2, "weighted_alpaca_eval_gpt4_turbo", base_url=f"{root}/v1")
    by_instruction = {r["instruction"]: r for r in records}
    assert len(server.requests) == 7
    for request in server.requests:  # the reply the server sent, read by AlpacaEval's parser with the config's kwargs
        text = json.dumps(request["body"]["messages"])
        instruction = next(i for i in INSTRUCTIONS if json.dumps(i)[1:-1] in text)
        (expected,) = completion_parsers.logprob_parser(request["reply"]["choices"][0], numerator_token="m",
                                                        denominator_tokens=["m", "M"], is_binarize=False)
        got = by_instruction[instruction]["preference"]
        assert (got is None) if math.isnan(expected) else got == expected


def test_the_judge_returns_p_a_better_for_both_orders(chat_server):
    root, server = chat_server
    params = {"base_url": f"{root}/v1", "annotator": "weighted_alpaca_eval_gpt4_turbo"}
    metrics, rows = judge_both_orders("alpaca-eval", INSTRUCTIONS, OUTPUTS_1, OUTPUTS_2, params)
    first = annotate(INSTRUCTIONS, OUTPUTS_1, OUTPUTS_2, params["annotator"], base_url=params["base_url"])
    swapped = annotate(INSTRUCTIONS, OUTPUTS_2, OUTPUTS_1, params["annotator"], base_url=params["base_url"])
    as_p = lambda r: None if r["preference"] is None else 2 - r["preference"]  # noqa: E731
    assert [r["p_first_better_policy_first"] for r in rows] == [as_p(r) for r in first]
    assert [r["p_first_better_baseline_first"] for r in rows] == [as_p(r) for r in swapped]
    assert rows[5]["preference"] == 1.5 and metrics["judge"] == "alpaca-eval"


def test_azure_deployment_url_and_api_key_header(chat_server, monkeypatch, caplog, tmp_path):
    root, server = chat_server
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-secret-123")
    params = {"base_url": root, "azure_deployment": "gpt-4o judge", "api_version": "2024-10-21",
              "api_key_env": "AZURE_OPENAI_API_KEY", "annotations": str(tmp_path / "a.json")}
    with caplog.at_level(logging.DEBUG):
        metrics, rows = judge_both_orders("alpaca-eval", INSTRUCTIONS[:2], OUTPUTS_1[:2], OUTPUTS_2[:2], params)
    paths = {r["path"] for r in server.requests}
    assert paths == {"/openai/deployments/gpt-4o%20judge/chat/completions?api-version=2024-10-21"}
    assert {r["headers"].get("api-key") for r in server.requests} == {"azure-secret-123"}
    assert all("authorization" not in r["headers"] for r in server.requests)
    written = json.dumps([metrics, rows]) + caplog.text + (tmp_path / "a.json").read_text()
    assert "azure-secret-123" not in written
    assert len(json.loads((tmp_path / "a.json").read_text())) == 4  # both orders in one file

    server.requests.clear()  # the v1 surface: an OpenAI-style base URL under /openai/v1, the key in api-key
    annotate(INSTRUCTIONS[:1], OUTPUTS_1[:1], OUTPUTS_2[:1], "weighted_alpaca_eval_gpt4_turbo",
             base_url=f"{root}/openai/v1", api_key_env="AZURE_OPENAI_API_KEY", api_key_header="api-key")
    assert [(r["path"], r["headers"].get("api-key")) for r in server.requests] == [
        ("/openai/v1/chat/completions", "azure-secret-123")]


def test_openai_style_bearer_key_and_model_override(chat_server, monkeypatch):
    root, server = chat_server
    monkeypatch.setenv("MY_KEY", "sk-abc")
    annotate(INSTRUCTIONS[:1], OUTPUTS_1[:1], OUTPUTS_2[:1], "weighted_alpaca_eval_gpt4_turbo", base_url=f"{root}/v1",
             api_key_env="MY_KEY", model="qwen2.5:0.5b")
    (request,) = server.requests
    assert request["headers"]["authorization"] == "Bearer sk-abc"
    assert request["body"]["model"] == "qwen2.5:0.5b"
    assert {k: request["body"][k] for k in ("max_tokens", "temperature", "top_p", "logprobs", "top_logprobs")} == {
        "max_tokens": 1, "temperature": 1, "top_p": 1.0, "logprobs": True, "top_logprobs": 5}
    assert [m["role"] for m in request["body"]["messages"]] == ["system", "user"]


def test_an_endpoint_without_logprobs_is_one_clear_line(chat_server):
    root, server = chat_server
    server.mode = "no-logprobs"
    with pytest.raises(DpoPluginsError, match=r"answered without logprobs, which this annotator's parser reads") as error:
        annotate(INSTRUCTIONS[:2], OUTPUTS_1[:2], OUTPUTS_2[:2], "weighted_alpaca_eval_gpt4_turbo",
                 base_url=f"{root}/v1")
    assert "\n" not in str(error.value)


def test_429_is_retried_a_bounded_number_of_times(chat_server):
    root, server = chat_server
    server.mode, server.failures_left = "fail:429:2", 2
    records = annotate(INSTRUCTIONS[:1], OUTPUTS_1[:1], OUTPUTS_2[:1], "weighted_alpaca_eval_gpt4_turbo",
                       base_url=f"{root}/v1", max_retries=3, retry_wait=0)
    assert len(server.requests) == 3 and records[0]["preference"] is not None
    server.requests.clear()
    server.mode, server.failures_left = "fail:429:always", -1
    with pytest.raises(DpoPluginsError, match=r"returned HTTP 429 after 3 tries: .*slow down"):
        annotate(INSTRUCTIONS[:1], OUTPUTS_1[:1], OUTPUTS_2[:1], "weighted_alpaca_eval_gpt4_turbo",
                 base_url=f"{root}/v1", max_retries=2, retry_wait=0)
    assert len(server.requests) == 3


def test_500_and_bad_answers_are_one_line_each(chat_server):
    root, server = chat_server
    server.mode, server.failures_left = "fail:500:always", -1
    kwargs = {"base_url": f"{root}/v1", "max_retries": 1, "retry_wait": 0}
    with pytest.raises(DpoPluginsError, match=r"HTTP 500 after 2 tries: .*boom"):
        annotate(INSTRUCTIONS[:1], OUTPUTS_1[:1], OUTPUTS_2[:1], "chatgpt", **kwargs)
    server.mode = "not-json"
    with pytest.raises(DpoPluginsError, match=r"did not answer JSON"):
        annotate(INSTRUCTIONS[:1], OUTPUTS_1[:1], OUTPUTS_2[:1], "chatgpt", **kwargs)
    with pytest.raises(DpoPluginsError, match=r"cannot reach http://127.0.0.1:9/v1/chat/completions"):
        annotate(INSTRUCTIONS[:1], OUTPUTS_1[:1], OUTPUTS_2[:1], "chatgpt", base_url="http://127.0.0.1:9/v1")


def test_unparsable_and_empty_replies_are_counted_not_raised(chat_server, caplog):
    root, server = chat_server
    server.mode = "text:chatgpt"  # replies include "I cannot tell." and "" (an empty answer)
    with caplog.at_level(logging.WARNING):
        verdicts = alpaca_eval_judge.alpaca_eval_judge(INSTRUCTIONS, OUTPUTS_1, OUTPUTS_2, annotator="chatgpt",
                                                        base_url=f"{root}/v1")
    records = annotate(INSTRUCTIONS, OUTPUTS_1, OUTPUTS_2, "chatgpt", base_url=f"{root}/v1")
    missing = sum(r["preference"] is None for r in records)
    assert missing >= 1
    assert [v for v, r in zip(verdicts, records) if r["preference"] is None] == [None] * missing
    lines = [r.getMessage() for r in caplog.records if "could not be parsed" in r.getMessage()]
    assert lines == [f"judge 'alpaca-eval': {missing} of {len(INSTRUCTIONS)} replies could not be parsed by chatgpt's "
                     "parser (null preference in AlpacaEval's records); each is counted as not judged"]
    assert "Traceback" not in caplog.text


def test_an_empty_filtered_answer_is_a_counted_miss_not_an_error(chat_server, caplog):
    root, server = chat_server
    server.mode = "filtered"
    with caplog.at_level(logging.WARNING):
        verdicts = alpaca_eval_judge.alpaca_eval_judge(INSTRUCTIONS[:3], OUTPUTS_1[:3], OUTPUTS_2[:3],
                                                        base_url=f"{root}/v1")
    assert verdicts == [None, None, None]
    assert "3 of 3 replies could not be parsed by weighted_alpaca_eval_gpt4_turbo's parser" in caplog.text
    server.mode = "filtered-400"  # the prompt of INSTRUCTIONS[3] (a joke) is refused with HTTP 400; the rest answer
    records = annotate(INSTRUCTIONS[2:5], OUTPUTS_1[2:5], OUTPUTS_2[2:5], "weighted_alpaca_eval_gpt4_turbo",
                       base_url=f"{root}/v1")
    assert [r["preference"] is None for r in records] == [False, True, True]  # INSTRUCTIONS[4]: an unparsable reply


def test_bad_parameters_are_clear(chat_server, tmp_path, monkeypatch):
    root, server = chat_server
    one = (INSTRUCTIONS[:1], OUTPUTS_1[:1], OUTPUTS_2[:1])
    with pytest.raises(DpoPluginsError, match="exactly one of base_url .* and local_model"):
        annotate(*one, "chatgpt")
    with pytest.raises(DpoPluginsError, match="exactly one of base_url"):
        annotate(*one, "chatgpt", base_url=f"{root}/v1", local_model="smollm2")
    with pytest.raises(DpoPluginsError, match="model is for an endpoint .base_url.; a local_model runs without it"):
        annotate(*one, "chatgpt", local_model="smollm2", model="gpt-4o")
    with pytest.raises(DpoPluginsError, match="did you mean weighted_alpaca_eval_gpt4_turbo"):
        annotate(*one, "weighted_alpaca_eval_gpt4_trubo", base_url=f"{root}/v1")
    with pytest.raises(DpoPluginsError) as error:
        annotate(*one, "chatgpt", base_url="localhost:8000", seed="x", concurrency=0, timeout=0, max_retries=1.5)
    assert str(error.value).splitlines() == [
        "judge 'alpaca-eval': seed must be a whole number, not 'x'",
        "judge 'alpaca-eval': concurrency must be a whole number at least 1, not 0",
        "judge 'alpaca-eval': base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, not 'localhost:8000'",
        "judge 'alpaca-eval': timeout must be a number of seconds above 0, not 0",
        "judge 'alpaca-eval': max_retries must be a whole number at least 0, not 1.5"]

    with pytest.raises(DpoPluginsError, match="needs api_version"):
        annotate(*one, "chatgpt", base_url=root, azure_deployment="d")
    existing = tmp_path / "mine.json"
    existing.write_text("precious")
    with pytest.raises(DpoPluginsError, match="already exists"):
        annotate(*one, "chatgpt", base_url=f"{root}/v1", annotations=existing)
    assert existing.read_text() == "precious"
    assert server.requests == []  # every check above comes before the first request
    with pytest.raises(DpoPluginsError, match="guanaco_33b completes with huggingface_api_completions"):
        annotate(*one, "guanaco_33b", base_url=f"{root}/v1")
    with pytest.raises(DpoPluginsError, match=r"gpt4_\d's completions_kwargs use tokens_to_avoid"):
        annotate(*one, "alpaca_farm", base_url=f"{root}/v1")
    config = tmp_path / "mine" / "configs.yaml"
    config.parent.mkdir()
    config.write_text("mine:\n  prompt_template: mine/missing.txt\n")
    with pytest.raises(DpoPluginsError, match=r"mine.prompt_template: mine/missing.txt not found"):
        annotate(*one, str(config.parent), base_url=f"{root}/v1")
    monkeypatch.setitem(sys.modules, "alpaca_eval.constants", None)
    with pytest.raises(DpoPluginsError, match=r"needs AlpacaEval: pip install 'dpo-plugins\[alpaca-eval\]'"):
        annotate(*one, "chatgpt", base_url=f"{root}/v1")


def test_a_config_by_path_with_its_own_template(chat_server, tmp_path):
    root, server = chat_server
    folder = tmp_path / "my_judge"
    folder.mkdir()
    (folder / "prompt.txt").write_text("<|im_start|>user\nWhich is better for {instruction}? (a) {output_1} "
                                       "(b) {output_2}. Answer m or M.\n<|im_end|>")
    (folder / "configs.yaml").write_text(
        "my_judge:\n  prompt_template: my_judge/prompt.txt\n  fn_completions: openai_completions\n"
        "  completions_kwargs: {model_name: local, max_tokens: 1, temperature: 0, logprobs: true, top_logprobs: 3}\n"
        "  fn_completion_parser: logprob_parser\n"
        "  completion_parser_kwargs: {numerator_token: m, denominator_tokens: [m, M], is_binarize: false}\n"
        "  completion_key: completions_all\n")
    records = annotate(INSTRUCTIONS[:2], OUTPUTS_1[:2], OUTPUTS_2[:2], str(folder), base_url=f"{root}/v1")
    assert [r["annotator"] for r in records] == ["my_judge", "my_judge"]
    sent = sorted(json.dumps(r["body"]["messages"], sort_keys=True) for r in server.requests)  # concurrent: any order
    assert sent == sorted(json.dumps([{"role": "user", "content": f"Which is better for {i}? (a) {a} (b) {b}. "
                                                                  "Answer m or M."}], sort_keys=True)
                          for i, a, b in zip(INSTRUCTIONS[:2], OUTPUTS_1[:2], OUTPUTS_2[:2]))


def test_a_local_model_reads_its_own_next_token_probabilities(tokenizer, tmp_path):
    import torch
    from alpaca_eval import completion_parsers
    from alpaca_eval.utils import prompt_to_chatml

    model_dir = tmp_path / "tiny"
    build_tiny_model(tokenizer, seed=3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    records = annotate(INSTRUCTIONS[:3], OUTPUTS_1[:3], OUTPUTS_2[:3], "weighted_alpaca_eval_gpt4_turbo",
                       local_model=str(model_dir))
    template = (Path(alpaca_eval_judge.config_path("weighted_alpaca_eval_gpt4_turbo")).parents[1]
                / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt").read_text()
    model = build_tiny_model(tokenizer, seed=3).eval()
    m, big_m = tokenizer.convert_tokens_to_ids("m"), tokenizer.convert_tokens_to_ids("M")
    for record, instruction, a, b in zip(records, INSTRUCTIONS, OUTPUTS_1, OUTPUTS_2):
        prompt = template.replace("{instruction}", instruction, 1).replace("{output_1}", a, 1)
        prompt = prompt.replace("{output_2}", b, 1).strip()
        ids = tokenizer.apply_chat_template(prompt_to_chatml(prompt), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        p_m = torch.softmax(logits[[m, big_m]], dim=-1)[0].item()
        assert record["preference"] == pytest.approx(2 - p_m, abs=1e-6)  # generate() vs one forward: fp32 noise
        parsed = completion_parsers.logprob_parser(record["preference_raw_completion"], numerator_token="m",
                                                   denominator_tokens=["m", "M"], is_binarize=False)
        assert record["preference"] == parsed[0]
        assert record["preference_price_per_example"] == 0.0


@pytest.mark.slow
def test_smollm2_as_the_weighted_annotator_in_both_orders():
    metrics, rows = judge_both_orders("alpaca-eval", INSTRUCTIONS[:2], OUTPUTS_1[:2], OUTPUTS_2[:2],
                                      {"local_model": "smollm2"})
    for row in rows:
        assert 0 < row["p_first_better_policy_first"] < 1 and 0 < row["p_first_better_baseline_first"] < 1
    assert metrics["judge_info"]["params"]["annotator"] == "weighted_alpaca_eval_gpt4_turbo"


def test_dpo_eval_with_the_judge_one_line_on_failure_and_no_key_in_the_report(chat_server, run_dpo, tiny_model_dir,
                                                                               tmp_path):
    root, server = chat_server
    prompts = INSTRUCTIONS[:3]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": a, "rejected": b}) + "\n"
                            for p, a, b in zip(prompts, OUTPUTS_1, OUTPUTS_2)))
    outputs = {}
    for name, texts in (("policy", OUTPUTS_1), ("baseline", OUTPUTS_2)):
        outputs[name] = tmp_path / f"{name}.jsonl"
        outputs[name].write_text("".join(json.dumps({"prompt": p, "output": o}) + "\n" for p, o in zip(prompts, texts)))
    command = ["eval", "--model", tiny_model_dir, "--data", data, "--judge", "alpaca-eval",
               "--judge-param", f"base_url={root}/v1", "--judge-param", "max_retries=1", "--judge-param", "retry_wait=0",
               "--policy-outputs", outputs["policy"], "--baseline-outputs", outputs["baseline"], "--no-progress"]
    env = {"OPENAI_API_KEY": "sk-very-secret"}
    server.mode, server.failures_left = "fail:500:always", -1
    failed = run_dpo(*command, "--report", tmp_path / "failed", env=env)
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    assert [line for line in failed.stderr.splitlines() if "HTTP 500" in line] == [
        f"dpo eval: error: judge 'alpaca-eval': {root}/v1/chat/completions returned HTTP 500 after 2 tries: "
        '{"error": {"message": "boom"}}']
    assert not (tmp_path / "failed").exists()

    server.mode = "logprobs"
    done = run_dpo(*command, "--report", tmp_path / "report", env=env)
    assert done.returncode == 0, done.stderr
    assert {r["headers"]["authorization"] for r in server.requests if r["headers"].get("authorization")} == {
        "Bearer sk-very-secret"}
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "report").iterdir() if p.is_file())
    assert "sk-very-secret" not in written + done.stdout + done.stderr
    annotations = json.loads((tmp_path / "report" / "annotations.json").read_text())
    assert [a["annotator"] for a in annotations] == ["alpaca-eval"] * 3
