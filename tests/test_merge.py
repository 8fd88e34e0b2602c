"""dpo merge: built-in and plugin merge methods, validation before any heavy
work, completed and checked checkpoints. Real mergekit on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dpo_plugins import MergeMethod, hookimpl
from dpo_plugins.cli import main
from dpo_plugins.workflows.merge import merge_into
from dpo_plugins.workflows.merge_config import load_merge_plan
from dpo_plugins.plugins import registrations
from dpo_plugins.specs import CheckResult
from dpo_plugins.errors import ConfigError

from conftest import build_tiny_model


def weighted_mean(tensors, weights, **params):
    """The plain weighted average a third party would write."""
    return sum(w * t for w, t in zip(weights, tensors)) / sum(weights)


class WeightedMeanPlugin:
    @hookimpl
    def register_merge_methods(self):
        yield MergeMethod(name="weighted_mean", fn=weighted_mean, description="sum(w t) / sum(w)")


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tokenizer):
    """Two tiny models (different seeds) and an exact copy of the first, each
    saved with the real tokenizer, chat template and generation config."""
    root = tmp_path_factory.mktemp("parents")
    for name, seed in (("a", 0), ("b", 1)):
        build_tiny_model(tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    shutil.copytree(root / "a", root / "a-copy")
    return root


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    found = {}
    for shard in sorted(Path(directory).glob("*.safetensors")):
        found.update(load_file(shard))
    return found


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def merged(tmp_path, config_text, name="merged"):
    config = write_config(tmp_path / f"{name}.yaml", config_text)
    output = tmp_path / name
    output.mkdir()
    merge_into(load_merge_plan(config), output)
    return weights(output)


def test_every_mergekit_method_is_a_builtin_listed_by_dpo_plugins(capsys):
    import mergekit.merge_methods

    shipped = {method.spec.name for method in mergekit.merge_methods.registered_methods()}
    builtins = {name for name, r in registrations("merge_method").items()
                if r.provider.startswith("dpo_plugins.default_plugins.merge_methods ")}
    assert shipped == builtins
    assert {"linear", "slerp", "ties", "dare_ties", "task_arithmetic", "model_stock"} <= builtins
    assert main(["plugins", "--json"]) == 0
    listed = {row["name"] for row in json.loads(capsys.readouterr().out) if row["kind"] == "merge_method"}
    assert shipped <= listed


def test_linear_half_half_of_a_model_with_itself_returns_its_weights(parents, tmp_path):
    result = merged(tmp_path, f"""
merge_method: linear
models:
  - model: {parents / "a"}
    parameters: {{weight: 0.5}}
  - model: {parents / "a-copy"}
    parameters: {{weight: 0.5}}
dtype: float32
""")
    original = weights(parents / "a")
    assert result.keys() == original.keys()
    for name, tensor in original.items():
        assert result[name].dtype == tensor.dtype
        assert result[name].equal(tensor), name


@pytest.mark.parametrize("t, endpoint", [(0.0, "a"), (1.0, "b")])
def test_slerp_at_t0_and_t1_returns_the_endpoints(parents, tmp_path, t, endpoint):
    result = merged(tmp_path, f"""
merge_method: slerp
base_model: {parents / "a"}
models:
  - model: {parents / "a"}
  - model: {parents / "b"}
parameters:
  t: {t}
dtype: float32
""")
    expected = weights(parents / endpoint)
    assert result.keys() == expected.keys()
    for name, tensor in expected.items():
        assert result[name].equal(tensor), name


@pytest.mark.parametrize("weight_a, weight_b", [(1.0, 2.0), (0.3, 0.7)])
def test_a_plugin_weighted_mean_matches_builtin_linear(parents, tmp_path, registered, weight_a, weight_b):
    """Bit for bit when the products w*t are exact (1 and 2); otherwise within
    one rounding: mergekit accumulates with a fused multiply-add (addcmul)."""
    registered(WeightedMeanPlugin(), "weighted-mean-plugin")
    models = f"""
models:
  - model: {parents / "a"}
    parameters: {{weight: {weight_a}}}
  - model: {parents / "b"}
    parameters: {{weight: {weight_b}}}
dtype: float32
"""
    linear = merged(tmp_path, "merge_method: linear" + models, "linear")
    plugin = merged(tmp_path, "merge_method: weighted_mean" + models, "plugin")
    a, b = weights(parents / "a"), weights(parents / "b")
    assert plugin.keys() == linear.keys() == a.keys()
    exact = weight_a == 1.0
    for name in linear:
        if exact:
            assert plugin[name].equal(linear[name]), name
        else:
            torch.testing.assert_close(plugin[name], linear[name], rtol=1e-6, atol=1e-7)
    # a real merge, not a copy of either parent
    name = "model.layers.0.mlp.up_proj.weight"
    expected = (weight_a * a[name] + weight_b * b[name]) / (weight_a + weight_b)
    torch.testing.assert_close(plugin[name], expected, rtol=1e-6, atol=1e-7)
    assert not plugin[name].equal(a[name]) and not plugin[name].equal(b[name])


def test_a_plugin_method_gets_its_declared_parameters(parents, tmp_path, registered):
    def scaled_mean(tensors, weights, scale=1.0, **params):
        return scale * weighted_mean(tensors, weights)

    class ScaledMean:
        @hookimpl
        def register_merge_methods(self):
            yield MergeMethod(name="scaled_mean", fn=scaled_mean, params={"scale": 1.0})

    registered(ScaledMean(), "scaled-mean-plugin")
    result = merged(tmp_path, f"""
merge_method: scaled_mean
models:
  - model: {parents / "a"}
  - model: {parents / "a-copy"}
parameters:
  scale: 2.0
""")
    for name, tensor in weights(parents / "a").items():
        assert result[name].equal(2.0 * tensor), name


def test_a_misspelled_method_fails_before_any_weight_is_read_with_a_suggestion_and_writes_nothing(
        parents, tmp_path, run_dpo):
    """The parents' weight files are garbage: reading one would be a second error (or another one)."""
    for name in ("a", "b"):
        shutil.copytree(parents / name, tmp_path / name)
        (tmp_path / name / "model.safetensors").write_bytes(b"not weights: a read would fail")
    config = write_config(tmp_path / "merge.yaml", f"""
merge_method: slrep
base_model: {tmp_path / "a"}
models:
  - model: {tmp_path / "a"}
  - model: {tmp_path / "b"}
parameters:
  t: 0.5
""")
    result = run_dpo("merge", "--config", config, "--output", tmp_path / "out")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"dpo merge: error: {config}:2: merge_method: unknown merge method 'slrep'; "
                           "did you mean 'slerp'? (available: "), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "merge.yaml"]


def test_every_problem_is_listed_with_its_line_before_any_weight_is_read(parents, tmp_path, tokenizer):
    wide = tmp_path / "wide"
    build_tiny_model(tokenizer, head_dim=16).save_pretrained(wide)
    tokenizer.save_pretrained(wide)
    other_vocab = tmp_path / "other-vocab"
    shutil.copytree(parents / "b", other_vocab)
    tokenizer_json = json.loads((other_vocab / "tokenizer.json").read_text())
    vocab = tokenizer_json["model"]["vocab"]
    first, second = list(vocab)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other_vocab / "tokenizer.json").write_text(json.dumps(tokenizer_json))

    config = write_config(tmp_path / "bad.yaml", f"""merge_method: task_arithmetic
base_modle: {parents / "a"}
base_model: {parents / "a"}
models:
  - model: {parents / "b"}
    parameters:
      weight: heavy
      lambda: 0.5
  - model: {tmp_path / "missing"}
    parameters: {{weight: 0.5}}
  - model: {wide}
    parameters: {{weight: 0.5, densty: 0.3}}
  - model: {other_vocab}
dtype: float33
""")
    with pytest.raises(ConfigError) as caught:
        load_merge_plan(config, output=tmp_path / "out")
    problems = caught.value.problems
    assert problems == [
        f"{config}:2: base_modle: unknown key in a merge configuration; did you mean 'base_model'? "
        "(allowed: base_model, chat_template, dtype, merge_method, models, modules, out_dtype, parameters, slices, "
        "tokenizer, tokenizer_source)",
        f"{config}:7: models[0].parameters.weight: bad value 'heavy' for task_arithmetic parameter 'weight': "
        "Input should be a valid number, unable to parse string as a number",
        f"{config}:8: models[0].parameters.lambda: 'lambda' is a shared parameter of task_arithmetic: mergekit "
        "ignores it here; set it under the top-level (or slice) parameters",
        f"{config}:9: models[1].model: model '{tmp_path / 'missing'}': no such directory (give a local checkpoint "
        "directory or the alias 'smollm2'; models are never downloaded)",
        f"{config}:12: models[2].parameters.densty: task_arithmetic has no parameter 'densty'; did you mean "
        "'density'? (its parameters: density, int8_mask, lambda, normalize, rescale, weight)",
        f"{config}:13: models[3]: task_arithmetic needs 'weight' for this model (under its parameters, or for all "
        "under the top-level parameters)",
        f"{config}:14: dtype: unknown dtype 'float33'; use one of float16, bfloat16, float32, float64",
    ]
    assert not (tmp_path / "out").exists()

    # once the missing model and bad values are fixed, shapes and vocabularies are compared
    fixed = config.read_text().replace(f"{tmp_path / 'missing'}", str(parents / "a-copy"))
    fixed = fixed.replace("heavy", "0.5").replace("      lambda: 0.5\n", "").replace("densty", "density")
    fixed = fixed.replace("base_modle", "# base_modle").replace("float33", "float32")
    fixed = fixed.replace(f"  - model: {other_vocab}\n", f"  - model: {other_vocab}\n    parameters: {{weight: 1}}\n")
    config.write_text(fixed)
    with pytest.raises(ConfigError) as caught:
        load_merge_plan(config)
    assert caught.value.problems == [
        f"{config}:10: models[2].model: '{wide}' cannot be merged with '{parents / 'a'}': head_dim 16 vs 8",
        f"{config}:12: models[3].model: '{other_vocab}' has a different tokenizer vocabulary than "
        f"'{parents / 'a'}'; set tokenizer_source (base, union or a model) so mergekit aligns the embeddings",
    ]


def test_method_input_rules_are_checked_up_front(parents, tmp_path):
    config = write_config(tmp_path / "slerp3.yaml", f"""merge_method: slerp
models:
  - model: {parents / "a"}
  - model: {parents / "b"}
  - model: {parents / "a-copy"}
""")
    with pytest.raises(ConfigError) as caught:
        load_merge_plan(config)
    assert caught.value.problems == [
        f"{config}:1: $: slerp needs the shared parameter 't' under parameters",
        f"{config}:2: models: slerp: Merge method requires a base input",
    ]


def test_aliases_resolve_to_the_embedded_model(smollm2_dir, tmp_path):
    config = write_config(tmp_path / "alias.yaml", """
merge_method: passthrough
models:
  - model: smollm2
""")
    plan = load_merge_plan(config)
    assert plan.parents == {"smollm2": Path(smollm2_dir).resolve()}
    assert plan.config["models"][0]["model"] == str(Path(smollm2_dir).resolve())
    assert plan.donor == Path(smollm2_dir).resolve()


def test_dpo_merge_writes_a_complete_checked_checkpoint(parents, tmp_path, capsys):
    """With tokenizer_source set, mergekit writes the tokenizer itself and
    leaves out generation_config.json; dpo merge copies it from the base."""
    config = write_config(tmp_path / "merge.yaml", f"""
merge_method: slerp
base_model: {parents / "a"}
tokenizer_source: base
models:
  - model: {parents / "a"}
  - model: {parents / "b"}
parameters:
  t: 0.3
dtype: float32
""")
    assert main(["merge", "--config", str(config), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"generation_config.json copied from {parents / 'a'}" in out
    for check in ("chat_template", "generation_config", "vocab_matches_embeddings", "dtype", "loads_and_generates"):
        assert f"  ok {check}: " in out
    output = tmp_path / "out"
    assert json.loads((output / "generation_config.json").read_text()) == json.loads(
        (parents / "a" / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(output).chat_template == AutoTokenizer.from_pretrained(parents / "a").chat_template
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yaml", "out"]
    # an existing output is refused before merging, and replaced with --force
    assert main(["merge", "--config", str(config), "--output", str(output)]) == 1
    assert "already exists and is not empty (remove it, or use --force)" in capsys.readouterr().err
    assert main(["merge", "--config", str(config), "--output", str(output), "--force"]) == 0


def test_a_plugin_check_vetoes_the_merge_and_nothing_is_written(parents, tmp_path, registered, capsys):
    seen = []

    class NoShallowModels:
        @hookimpl
        def check_merged_model(self, checkpoint):
            seen.append(checkpoint.path)
            layers = checkpoint.config()["num_hidden_layers"]
            yield CheckResult(name="depth", passed=layers >= 4, message=f"{layers} layers, want at least 4")

    registered(NoShallowModels(), "no-shallow-models")
    config = write_config(tmp_path / "merge.yaml", f"""
merge_method: linear
models:
  - model: {parents / "a"}
    parameters: {{weight: 1.0}}
  - model: {parents / "b"}
    parameters: {{weight: 1.0}}
""")
    assert main(["merge", "--config", str(config), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "merge stopped at stage 'check' (2/2)" in err
    assert "depth (no-shallow-models (test_merge)): 2 layers, want at least 4" in err
    assert len(seen) == 1 and not seen[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yaml"]
