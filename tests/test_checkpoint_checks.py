"""The checks every merged checkpoint goes through, and the hook that adds more."""

from __future__ import annotations

import shutil

import pytest

from dpo_plugins import hookimpl
from dpo_plugins.errors import CheckFailed
from dpo_plugins.adapters.models import open_checkpoint
from dpo_plugins.workflows.checkpoint_checks import require_checks_pass, run_checks
from dpo_plugins.errors import PluginError

from conftest import build_tiny_model

BUILTIN = "dpo_plugins.default_plugins.checks"


def verdicts(results):
    return {result.name: (result.passed, result.message) for provider, result in results if provider.startswith(BUILTIN)}


def test_a_complete_checkpoint_passes_every_builtin_check(tiny_model_dir):
    found = verdicts(run_checks(open_checkpoint(tiny_model_dir, "float32")))
    assert set(found) == {"chat_template", "generation_config", "vocab_matches_embeddings", "dtype", "loads_and_generates"}
    assert all(passed for passed, _ in found.values()), found
    assert found["vocab_matches_embeddings"][1] == "49152 tokens, 49152 embedding rows"
    assert found["dtype"][1] == "weights are float32"


def test_the_pitfalls_mergers_hit_each_fail_their_check(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "generation_config.json").unlink()
    (broken / "chat_template.jinja").unlink()
    found = verdicts(run_checks(open_checkpoint(broken, "bfloat16")))
    assert found["chat_template"] == (False, "the tokenizer has no chat template")
    assert found["generation_config"] == (False, "generation_config.json is missing")
    assert found["dtype"] == (False, "requested bfloat16, weights are float32")
    assert found["vocab_matches_embeddings"][0] and found["loads_and_generates"][0]
    with pytest.raises(CheckFailed) as caught:
        require_checks_pass(open_checkpoint(broken, "bfloat16"))
    assert str(caught.value).splitlines()[0] == f"{broken}: 3 checkpoint check(s) failed:"


def test_a_tokenizer_larger_than_the_embeddings_fails(tokenizer, tmp_path):
    model = build_tiny_model(tokenizer)
    model.resize_token_embeddings(1000)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    found = verdicts(run_checks(open_checkpoint(tmp_path)))
    assert found["vocab_matches_embeddings"] == (False, "the tokenizer has 49152 tokens but the embeddings have 1000 rows")
    assert found["dtype"] == (True, "no dtype requested; weights are float32")


def test_an_unreadable_checkpoint_fails_checks_instead_of_crashing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    found = verdicts(run_checks(open_checkpoint(tmp_path)))
    assert not any(passed for passed, _ in found.values())
    assert found["dtype"] == (False, "no floating-point weights in *.safetensors")


def test_a_plugin_check_runs_after_the_builtins_and_can_veto(tiny_model_dir, registered):
    class NoTiedEmbeddings:
        @hookimpl
        def check_merged_model(self, checkpoint):
            from dpo_plugins import CheckResult

            tied = checkpoint.config().get("tie_word_embeddings")
            return [CheckResult("untied", not tied, f"tie_word_embeddings={tied}")]

    registered(NoTiedEmbeddings(), "no-tied")
    results = run_checks(open_checkpoint(tiny_model_dir))
    assert [provider for provider, _ in results][-1] == "no-tied (test_checkpoint_checks)"
    with pytest.raises(CheckFailed) as caught:
        require_checks_pass(open_checkpoint(tiny_model_dir))
    assert "untied (no-tied (test_checkpoint_checks)): tie_word_embeddings=True" in str(caught.value)


def test_a_crashing_or_malformed_check_plugin_is_named(tiny_model_dir, registered):
    class Crashes:
        @hookimpl
        def check_merged_model(self, checkpoint):
            raise RuntimeError("boom")

    registered(Crashes(), "crashes")
    with pytest.raises(PluginError, match=r"plugin crashes \(test_checkpoint_checks\) failed in check_merged_model\(\): RuntimeError: boom"):
        run_checks(open_checkpoint(tiny_model_dir))


def test_a_check_plugin_must_yield_check_results(tiny_model_dir, registered):
    class Malformed:
        @hookimpl
        def check_merged_model(self, checkpoint):
            yield "looks fine"

    registered(Malformed(), "malformed")
    with pytest.raises(PluginError, match=r"check_merged_model\(\) yielded 'looks fine', expected a CheckResult"):
        run_checks(open_checkpoint(tiny_model_dir))
