"""Built-in judges: rules, a real HTTP server on 127.0.0.1, a tiny reward model, a tiny LM judge."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import build_tiny_model
from dpo_plugins import Judge, hookimpl
from dpo_plugins.default_plugins.judges import PAIRWISE_TEMPLATE, prompt_text
from dpo_plugins.errors import DpoPluginsError, PluginError
from dpo_plugins.evals.judging import judge_both_orders

PROMPTS = ["Capital of France?", "2+2?", "Largest planet?"]


def test_exact_match_and_regex_rules():
    policy, baseline = ["Paris", "5", "jupiter "], ["Lyon", "4", "Jupiter"]
    metrics, rows = judge_both_orders("exact-match", PROMPTS, policy, baseline, references=["paris", "4", "Jupiter"])
    assert [r["outcome"] for r in rows] == ["win", "loss", "tie"]
    assert (metrics["wins"], metrics["losses"], metrics["ties"], metrics["position_consistency"]) == (1, 1, 1, 1.0)
    metrics, rows = judge_both_orders("regex", PROMPTS, ["answer: 4", "no idea", "answer: 7"],
                                      ["answer: 5", "answer: 4", "answer: 7"], {"pattern": r"answer: (\d+)"},
                                      references=["4", "4", "8"])
    assert [r["outcome"] for r in rows] == ["win", "loss", "tie"]
    with pytest.raises(DpoPluginsError, match="needs the parameter 'pattern'"):
        judge_both_orders("regex", PROMPTS, policy, baseline)


class ScriptedJudgeServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint whose verdict follows the word 'good'."""

    requests: list = []
    mode = "content"

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).mode == "error":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        text = body["messages"][0]["content"]
        a = text.split("[Response A]")[1].split("[Response B]")[0]
        if type(self).mode == "always-a":
            verdict = "[[A]]"
        elif type(self).mode == "chatty":
            verdict = "I cannot decide."
        else:
            verdict = "[[A]]" if "good" in a else "[[B]]" if "good" in text.split("[Response B]")[1] else "[[C]]"
        reply = {"choices": [{"message": {"role": "assistant", "content": f"Reasoning... {verdict}"}}]}
        payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), ScriptedJudgeServer)
    ScriptedJudgeServer.requests, ScriptedJudgeServer.mode = [], "content"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_openai_compatible_judge_over_real_http(judge_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    params = {"base_url": judge_server, "model": "judge-7b", "api_key_env": "JUDGE_KEY"}
    metrics, rows = judge_both_orders("openai-compatible", PROMPTS, ["good answer", "meh", "meh"],
                                      ["meh", "good answer", "meh"], params, cache=False)
    assert [r["outcome"] for r in rows] == ["win", "loss", "tie"]
    assert len(ScriptedJudgeServer.requests) == 6  # every prompt in both orders (uncached: "meh" vs "meh" twice)
    first = ScriptedJudgeServer.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "judge-7b" and first["body"]["temperature"] == 0.0
    assert metrics["judge_info"]["params"]["model"] == "judge-7b" and metrics["position_consistency"] == 1.0
    with pytest.raises(DpoPluginsError, match="judge 'openai-compatible' .*has no parameter 'access_token'; it "
                                              "accepts: api_key_env, api_key_header, base_url, max_tokens"):
        judge_both_orders("openai-compatible", PROMPTS, ["x"] * 3, ["y"] * 3, {**params, "access_token": "tok-123"})


class TokenJudge:
    @hookimpl
    def register_judges(self):
        yield Judge(name="with-token", fn=lambda prompts, a, b, **params: ["tie"] * len(prompts),
                    params={"access_token": None}, cache=False)


def test_credentials_in_judge_params_are_never_reported(registered):
    registered(TokenJudge(), "token-judge")
    metrics, _ = judge_both_orders("with-token", PROMPTS, ["x"] * 3, ["y"] * 3, {"access_token": "tok-123"})
    assert metrics["judge_info"]["params"]["access_token"] == "<redacted>" and "tok-123" not in json.dumps(metrics)


def test_a_position_biased_judge_yields_ties_not_wins(judge_server):
    ScriptedJudgeServer.mode = "always-a"
    metrics, _ = judge_both_orders("openai-compatible", PROMPTS, ["x"] * 3, ["y"] * 3, {"base_url": judge_server})
    assert (metrics["wins"], metrics["ties"], metrics["position_consistency"]) == (0, 3, 0.0)


def test_openai_compatible_errors_are_clear(judge_server, caplog):
    ScriptedJudgeServer.mode = "chatty"
    with caplog.at_level("WARNING", logger="dpo_plugins.judges"):
        metrics, _ = judge_both_orders("openai-compatible", PROMPTS[:1], ["x"], ["y"], {"base_url": judge_server})
    assert metrics["ties"] == 1 and "no [[A]]/[[B]]/[[C]] verdict" in caplog.text  # through logging, a warning
    ScriptedJudgeServer.mode = "error"  # the same texts: without the cache the server is asked again
    with pytest.raises(DpoPluginsError, match="HTTP 500: overloaded"):
        judge_both_orders("openai-compatible", PROMPTS[:1], ["x"], ["y"], {"base_url": judge_server}, cache=False)
    with pytest.raises(DpoPluginsError, match="cannot reach"):
        judge_both_orders("openai-compatible", PROMPTS[:1], ["x"], ["y"], {"base_url": "http://127.0.0.1:9/v1"})


def test_reward_model_judge_with_a_tiny_random_classifier(tokenizer, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    policy, baseline = ["Paris.", "4", "Jupiter, by far."], ["Lyon.", "Five", "Saturn"]
    metrics, rows = judge_both_orders("reward-model", prompts, policy, baseline, {"model": str(tmp_path)})

    def score(prompt, output):
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": output}], tokenize=False)
        with torch.no_grad():
            return model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()

    expected = ["win" if score(p, a) > score(p, b) else "loss" for p, a, b in zip(prompts, policy, baseline)]
    assert [r["outcome"] for r in rows] == expected and metrics["position_consistency"] == 1.0


def test_llm_pairwise_judge_reads_the_next_token(tokenizer, tmp_path):
    import torch

    judge_dir = tmp_path / "judge"
    judge_model = build_tiny_model(tokenizer, seed=3).eval()
    judge_model.save_pretrained(judge_dir)
    tokenizer.save_pretrained(judge_dir)
    policy, baseline = ["Paris.", "4", "Jupiter"], ["Lyon.", "5", "Mars"]
    _, rows = judge_both_orders("llm-pairwise", PROMPTS, policy, baseline, {"model": str(judge_dir)})

    def verdict(prompt, a, b):
        text = PAIRWISE_TEMPLATE.format(prompt=prompt_text(prompt), a=a, b=b)
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            logits = judge_model(input_ids=torch.tensor([ids])).logits[0, -1]
        a_id, b_id = (tokenizer.encode(x, add_special_tokens=False)[0] for x in "AB")
        return "a" if logits[a_id] > logits[b_id] else "b" if logits[b_id] > logits[a_id] else "tie"

    for mode in ("logprob", "verdict"):
        _, rows = judge_both_orders("llm-pairwise", PROMPTS, policy, baseline, {"model": str(judge_dir), "mode": mode})
        for row, prompt, p, b in zip(rows, PROMPTS, policy, baseline):
            assert row["verdict_policy_first"] == verdict(prompt, p, b)
            assert row["verdict_baseline_first"] == verdict(prompt, b, p)
    _, rows = judge_both_orders("llm-pairwise", PROMPTS, policy, baseline,
                                {"model": str(judge_dir), "mode": "verdict", "tie_margin": 1e9})
    assert {r["outcome"] for r in rows} == {"tie"}
    with pytest.raises(DpoPluginsError, match="mode must be one of logprob, verdict, not 'guess'"):
        judge_both_orders("llm-pairwise", PROMPTS, policy, baseline, {"model": str(judge_dir), "mode": "guess"})


def test_llm_pairwise_logprob_mode_averages_both_orders_into_one_preference(tokenizer, tmp_path):
    import torch

    judge_dir = tmp_path / "judge"
    judge_model = build_tiny_model(tokenizer, seed=5).eval()
    judge_model.save_pretrained(judge_dir)
    tokenizer.save_pretrained(judge_dir)
    policy, baseline = ["Paris.", "4", "Jupiter"], ["Lyon.", "5", "Jupiter"]  # the last pair is identical
    metrics, rows = judge_both_orders("llm-pairwise", PROMPTS, policy, baseline, {"model": str(judge_dir)})

    def p_first_better(prompt, a, b):  # P("A") / (P("A") + P("B")) from the full softmax, by hand
        text = PAIRWISE_TEMPLATE.format(prompt=prompt_text(prompt), a=a, b=b)
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(judge_model(input_ids=torch.tensor([ids])).logits[0, -1].double(), dim=-1)
        a_id, b_id = (tokenizer.encode(x, add_special_tokens=False)[0] for x in "AB")
        return (probs[a_id] / (probs[a_id] + probs[b_id])).item()

    expected_first = [p_first_better(q, p, b) for q, p, b in zip(PROMPTS, policy, baseline)]
    expected_swapped = [p_first_better(q, b, p) for q, p, b in zip(PROMPTS, policy, baseline)]
    preferences = [(x + 1 - y) / 2 for x, y in zip(expected_first, expected_swapped)]
    # The judge runs the LM head on the last position only; the full forward here differs by float rounding.
    for row, x, y, preference in zip(rows, expected_first, expected_swapped, preferences):
        assert row["p_first_better_policy_first"] == pytest.approx(x, abs=1e-6)
        assert row["p_first_better_baseline_first"] == pytest.approx(y, abs=1e-6)
        assert row["preference"] == pytest.approx(1 + preference, abs=1e-6)  # AlpacaEval's scale: 1 + P(policy)
    assert [r["outcome"] for r in rows[:2]] == ["win" if p > 0.5 else "loss" for p in preferences[:2]]
    assert rows[2]["outcome"] == "tie"  # identical outputs: exactly one half, whatever the judge's slot bias
    assert metrics["win_rate"] == pytest.approx(sum(preferences) / 3, abs=1e-6)  # AlpacaEval's: the mean preference
    assert metrics["first_position_rate"] == pytest.approx(sum(expected_first + expected_swapped) / 6, abs=1e-6)
    assert metrics["ties"] == 1 and metrics["wins"] + metrics["losses"] == 2


def test_next_token_logits_runs_the_lm_head_on_the_last_position_only(tokenizer):
    import torch

    from dpo_plugins.default_plugins.judges import next_token_logits

    model = build_tiny_model(tokenizer, seed=3).eval()
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 20)["input_ids"]
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids])).logits[0, -1]
    head_inputs = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: head_inputs.append(args[0].shape[1]))
    try:
        logits = next_token_logits(model, ids)
    finally:
        hook.remove()
    assert head_inputs == [1]
    assert torch.allclose(logits, full, rtol=0, atol=1e-5)  # float rounding only: the product has another shape

    class PlainForward(torch.nn.Module):
        """A causal LM whose forward predates ``logits_to_keep``: it gets the full forward."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids)

    assert torch.equal(next_token_logits(PlainForward(model), ids), full)


class BrokenJudges:
    @hookimpl
    def register_judges(self):
        yield Judge(name="broken", fn=lambda prompts, a, b, **params: ["a"] * (len(prompts) - 1))
        yield Judge(name="crashing", fn=lambda prompts, a, b, **params: 1 / 0)


def test_a_plugin_judge_that_misbehaves_is_named(registered):
    registered(BrokenJudges(), "broken-judges")
    with pytest.raises(PluginError, match="judge 'broken' .* returned 2 verdicts for 3 prompts"):
        judge_both_orders("broken", PROMPTS, ["x"] * 3, ["y"] * 3)
    with pytest.raises(PluginError, match="judge 'crashing' .*ZeroDivisionError"):
        judge_both_orders("crashing", PROMPTS, ["x"] * 3, ["y"] * 3)
    with pytest.raises(DpoPluginsError, match="unknown judge 'nope'; available: .*exact-match"):
        judge_both_orders("nope", PROMPTS, ["x"] * 3, ["y"] * 3)


def test_reward_accuracy_through_the_evaluate_library():
    import evaluate

    from dpo_plugins.evals import hf_metric

    metric = evaluate.load(hf_metric.__file__)
    metric.add_batch(chosen_rewards=[1.0, 0.5], rejected_rewards=[0.0, 0.5])
    metric.add(chosen_rewards=-1.0, rejected_rewards=2.0)
    assert metric.compute() == {"n_pairs": 3, "reward_accuracy": 1 / 3, "reward_ties": 1, "mean_margin": -2 / 3,
                                "n_undefined_scores": 0}


def test_win_rate_through_the_evaluate_library():
    import evaluate

    from dpo_plugins.evals import hf_winrate_metric
    from dpo_plugins.evals.stats import win_rate_metrics

    first, swapped = ["a", "a", "b", "tie"], ["b", "a", "a", "tie"]
    metric = evaluate.load(hf_winrate_metric.__file__)
    result = metric.compute(verdicts_policy_first=first, verdicts_baseline_first=swapped,
                            policy_lengths=[10, 20, 30, 40], baseline_lengths=[5, 5, 5, 5])
    assert result == win_rate_metrics(first, swapped, [10, 20, 30, 40], [5, 5, 5, 5])
    assert (result["wins"], result["losses"], result["ties"], result["win_rate"]) == (1, 1, 2, 0.5)
