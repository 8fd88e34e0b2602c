"""Shared fixtures: the real SmolLM2 tokenizer, tiny random causal LMs.

Tiny models keep SmolLM2's tokenizer and chat template (so tokenization,
templates and special tokens are real) but have two layers and a hidden size
of 32, so a training step takes milliseconds. Tests marked ``slow`` use the
real SmolLM2-135M; they run in CI too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dpo_plugins import plugins


# `accelerate launch` of two processes; --multi_gpu picks its torch.distributed launcher, and without GPUs
# the processes join one gloo group on CPU (`dpo train` sets use_cpu there). Append `-m dpo_plugins ...`.
TWO_PROCESSES = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def two_machines(port: int, processes_each: int = 1) -> list[list[str]]:
    """The `accelerate launch` prefixes of two "machines" on 127.0.0.1 (ranks 0 and 1), to be started together."""
    total = str(2 * processes_each)
    return [[str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", total,
             "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
             "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]
            for rank in (0, 1)]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_together(commands, timeout=600, **kwargs) -> list:
    """Start every command at once (the machines of one job), wait for all; returns their CompletedProcess."""
    import subprocess

    started = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
               for command in commands]
    results = []
    for process, command in zip(started, commands):
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in started:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return results


@pytest.fixture(scope="session")
def smollm2_dir():
    """The materialised SmolLM2-135M-Instruct checkpoint (built once, cached)."""
    from dpo_plugins.adapters.models import materialise_smollm2

    return materialise_smollm2()


@pytest.fixture(scope="session", autouse=True)
def private_cache(smollm2_dir, tmp_path_factory):
    """``$DPO_PLUGINS_CACHE`` for the whole session: the one SmolLM2 build, but reference log-probs of its own.

    So no test reads an entry an earlier run left in the user's cache, and
    none leaves entries there. Tests that need a cache of their own still set
    the variable themselves.
    """
    import os

    cache = tmp_path_factory.mktemp("dpo-plugins-cache")
    (cache / smollm2_dir.name).symlink_to(smollm2_dir, target_is_directory=True)
    previous = os.environ.get("DPO_PLUGINS_CACHE")
    os.environ["DPO_PLUGINS_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("DPO_PLUGINS_CACHE", None)
    else:
        os.environ["DPO_PLUGINS_CACHE"] = previous


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def build_tiny_model(tokenizer, seed: int = 0, **overrides):
    """A random two-layer Llama over the real tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **overrides,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float32)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved tiny model + tokenizer directory, usable wherever a model path is."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def registered():
    """Register plugin objects for one test; always unregistered afterwards.

    ``registered(obj, name)`` returns ``obj``.
    """
    names = []

    def register(plugin, name):
        plugins.load_plugins()
        plugins.pm.register(plugin, name=name)
        names.append(name)
        return plugin

    try:
        yield register
    finally:
        for name in names:
            plugins.pm.unregister(name=name)


@pytest.fixture
def run_dpo():
    """Run ``python -m dpo_plugins ARGS`` in a subprocess, as a user would.

    ``run_dpo(*args, env={...}, cwd=...)`` returns the CompletedProcess;
    ``env`` entries are added to (or, when None, removed from) os.environ.
    """
    import os
    import subprocess
    import sys

    def run(*args, env=None, cwd=None, timeout=600):
        full_env = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        return subprocess.run(
            [sys.executable, "-m", "dpo_plugins", *map(str, args)],
            env=full_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def example_plugin_site(tmp_path):
    """examples/dpo-plugins-double-sigmoid pip-installed for real into a folder; returns that folder.

    Built from a copy, so pip's in-place build files never land in the checkout.
    """
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    source = tmp_path / "example-source"
    shutil.copytree(Path(__file__).resolve().parent.parent / "examples" / "dpo-plugins-double-sigmoid", source)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    return site


@pytest.fixture
def packed_calls(monkeypatch):
    """Counts the trainer's packed forwards (``collated_pair_logps`` calls); the calls still run."""
    from dpo_plugins.adapters import packing

    calls = []
    original = packing.collated_pair_logps

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(packing, "collated_pair_logps", counting)
    return calls
