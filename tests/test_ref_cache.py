"""Reference log-probs on disk: reused when valid, recomputed when not."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from dpo_plugins.adapters import packing, ref_cache

from conftest import build_tiny_model

PAIRS = [
    {"prompt_ids": [1, 9690, 198, 2683], "chosen_ids": [359, 253, 2], "rejected_ids": [7, 8, 9, 10, 2]},
    {"prompt_ids": [1, 30, 31], "chosen_ids": [40, 41, 42, 43, 2], "rejected_ids": [50, 2]},
    {"prompt_ids": [1] + list(range(100, 140)), "chosen_ids": [3, 2], "rejected_ids": [4, 5, 2]},
]


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model(tokenizer, seed=7).eval()


def compute_counting(model, tokenizer, cache, pairs=PAIRS, **kwargs):
    calls = []
    original = ref_cache.packed_pair_logps

    def counting(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    ref_cache.packed_pair_logps = counting
    try:
        chosen, rejected, hit = ref_cache.reference_logps(model, tokenizer, pairs, cache=cache, **kwargs)
    finally:
        ref_cache.packed_pair_logps = original
    return chosen, rejected, hit, len(calls)


def test_first_call_computes_second_reuses(model, tokenizer, tmp_path):
    cache = ref_cache.RefLogpsCache(tmp_path)
    chosen, rejected, hit, calls = compute_counting(model, tokenizer, cache, max_length=32, batch_size=2)
    assert (hit, calls) == (False, 2)
    with torch.no_grad():
        direct = packing.packed_pair_logps(model, PAIRS, max_length=32, logps_dtype=torch.float64)
    torch.testing.assert_close(chosen, direct.chosen_logps)
    torch.testing.assert_close(rejected, direct.rejected_logps)
    again = compute_counting(model, tokenizer, cache, max_length=32)
    assert again[2:] == (True, 0)
    assert torch.equal(again[0], chosen) and torch.equal(again[1], rejected)
    assert [p.name for p in tmp_path.iterdir()] == [cache.path(ref_cache.make_key(PAIRS, model, tokenizer, 32, "keep_start")).name]


def test_the_key_follows_data_weights_config_tokenizer_and_truncation(model, tokenizer):
    base = ref_cache.make_key(PAIRS, model, tokenizer, 32, "keep_start")
    changed_model = copy.deepcopy(model)
    with torch.no_grad():
        changed_model.model.norm.weight[0] += 1e-3
    # Same weights, another rotary base: not in the state dict, but the log-probs differ.
    rope = build_tiny_model(tokenizer, seed=7, rope_theta=500.0).eval()
    assert all(torch.equal(a, b) for a, b in zip(rope.state_dict().values(), model.state_dict().values()))
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = tokenizer.chat_template + " "
    variants = [
        ref_cache.make_key(PAIRS[:2], model, tokenizer, 32, "keep_start"),
        ref_cache.make_key([PAIRS[1], PAIRS[0], PAIRS[2]], model, tokenizer, 32, "keep_start"),
        ref_cache.make_key(PAIRS, changed_model, tokenizer, 32, "keep_start"),
        ref_cache.make_key(PAIRS, rope, tokenizer, 32, "keep_start"),
        ref_cache.make_key(PAIRS, model, templated, 32, "keep_start"),
        ref_cache.make_key(PAIRS, model, tokenizer, 64, "keep_start"),
        ref_cache.make_key(PAIRS, model, tokenizer, 32, "keep_end"),
        ref_cache.make_key(PAIRS, model, tokenizer, 32, "keep_start", ld_alpha=0.5),  # LD-DPO's sums
    ]
    digests = {base.digest()} | {v.digest() for v in variants}
    assert len(digests) == 1 + len(variants)
    assert ref_cache.make_key(PAIRS, copy.deepcopy(model), copy.deepcopy(tokenizer), 32, "keep_start") == base
    used = copy.deepcopy(model)
    used.config.use_cache = False  # how a model is run is not what it computes
    assert ref_cache.make_key(PAIRS, used, tokenizer, 32, "keep_start") == base


def test_the_model_hash_is_of_the_weights_not_the_path(model, tmp_path):
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert ref_cache.model_fingerprint(a) == ref_cache.model_fingerprint(b) == ref_cache.model_fingerprint(model)


def corrupt_tensor_bytes(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the rejected tensor's float data: still a valid safetensors file
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (corrupt_tensor_bytes, "checksum does not match"),
        (lambda path: path.write_bytes(b"not a safetensors file"), "unreadable"),
        (lambda path: path.write_bytes(path.read_bytes()[:-10]), "unreadable"),
    ],
)
def test_a_corrupted_entry_is_detected_and_recomputed(model, tokenizer, tmp_path, caplog, damage, message):
    cache = ref_cache.RefLogpsCache(tmp_path)
    good_chosen, good_rejected, _, _ = compute_counting(model, tokenizer, cache)
    path = cache.path(ref_cache.make_key(PAIRS, model, tokenizer, None, "keep_start"))
    damage(path)
    with caplog.at_level(logging.WARNING, logger="dpo_plugins.ref_cache"):
        chosen, rejected, hit, calls = compute_counting(model, tokenizer, cache)
    assert (hit, calls) == (False, 1)
    assert message in caplog.text
    assert torch.equal(chosen, good_chosen) and torch.equal(rejected, good_rejected)
    assert compute_counting(model, tokenizer, cache)[2:] == (True, 0)  # rewritten, valid again


def test_an_entry_for_another_key_is_never_reused(model, tokenizer, tmp_path, caplog):
    cache = ref_cache.RefLogpsCache(tmp_path)
    compute_counting(model, tokenizer, cache, max_length=8)
    other = cache.path(ref_cache.make_key(PAIRS, model, tokenizer, 8, "keep_start"))
    target = cache.path(ref_cache.make_key(PAIRS, model, tokenizer, None, "keep_start"))
    target.write_bytes(other.read_bytes())  # e.g. a file copied or renamed by hand
    with caplog.at_level(logging.WARNING, logger="dpo_plugins.ref_cache"):
        _, _, hit, calls = compute_counting(model, tokenizer, cache)
    assert (hit, calls) == (False, 1)
    assert "key does not match" in caplog.text


def test_a_failed_computation_leaves_nothing_behind(tmp_path):
    cache = ref_cache.RefLogpsCache(tmp_path)
    key = ref_cache.RefCacheKey("d", "m", "t", None, "keep_start")

    def fail():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.get_or_compute(key, 1, fail)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_entries_are_safetensors_with_a_checksum(tmp_path):
    from safetensors import safe_open

    cache = ref_cache.RefLogpsCache(tmp_path)
    key = ref_cache.RefCacheKey("d", "m", "t", 512, "keep_start")
    path = cache.store(key, torch.tensor([-1.5, -2.0]), torch.tensor([-3.0, -4.25]))
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == ["chosen", "rejected"]
        assert len(handle.metadata()["sha256"]) == 64
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    chosen, rejected = cache.load(key, 2)
    assert chosen.tolist() == [-1.5, -2.0] and rejected.tolist() == [-3.0, -4.25]
    assert cache.load(key, 3) is None  # wrong number of pairs


# A process that stores one entry under KEY in the folder argv[1], argv[2] times in a row (or, with argv[3] ==
# "hang", writes half of it and waits to be killed).
WRITER = """
import sys, time, torch
from pathlib import Path
import safetensors.torch
from dpo_plugins.adapters import ref_cache

key = ref_cache.RefCacheKey("d", "m", "t", None, "keep_start")
cache = ref_cache.RefLogpsCache(Path(sys.argv[1]))
if sys.argv[3:] == ["hang"]:
    def half_then_hang(tensors, path, metadata=None):
        Path(path).write_bytes(safetensors.torch.save(tensors, metadata=metadata)[:100])
        print("writing", flush=True)
        time.sleep(600)
    safetensors.torch.save_file = half_then_hang
for _ in range(int(sys.argv[2])):
    cache.store(key, torch.arange(1000, dtype=torch.float64), -torch.arange(1000, dtype=torch.float64))
"""
KEY = ref_cache.RefCacheKey("d", "m", "t", None, "keep_start")


def test_two_processes_writing_one_entry_at_once_never_show_a_reader_half_of_it(tmp_path, caplog):
    """Two runs storing the same entry at once: every read finds nothing or the whole entry; no file is left over.

    (A reader that met a half-written file would log it as unreadable or mismatched and recompute.)
    """
    import subprocess
    import sys

    caplog.set_level(logging.WARNING, logger="dpo_plugins.ref_cache")
    cache = ref_cache.RefLogpsCache(tmp_path)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "60"]) for _ in range(2)]
    reads = []
    while any(writer.poll() is None for writer in writers):
        reads.append(cache.load(KEY, 1000))
    assert [writer.wait() for writer in writers] == [0, 0]
    assert caplog.records == []
    found = [read for read in reads if read is not None]
    assert found, "no read happened while the entry existed"
    for chosen, rejected in found + [cache.load(KEY, 1000)]:
        assert chosen.tolist() == list(range(1000)) and rejected.tolist() == [-v for v in range(1000)]
    assert [p.name for p in tmp_path.iterdir()] == [cache.path(KEY).name]


def test_a_killed_writer_leaves_no_entry_and_the_next_run_recomputes_and_cleans_up(tmp_path, caplog):
    import signal
    import subprocess
    import sys

    cache = ref_cache.RefLogpsCache(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "1", "hang"], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    [partial] = tmp_path.iterdir()
    assert partial.name.startswith(f".{cache.path(KEY).name}.partial-{writer.pid}@")
    assert cache.load(KEY, 1000) is None  # the half-written file is never read as the entry
    # Another node's sibling (same folder on a shared file system) is not this host's to remove.
    foreign = tmp_path / f".{cache.path(KEY).name}.partial-{writer.pid}@another.node-abcd"
    foreign.write_bytes(b"still being written over there")
    chosen, rejected, hit = cache.get_or_compute(KEY, 2, lambda: (torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0])))
    assert not hit and chosen.tolist() == [-1.0, -2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cache.path(KEY).name, foreign.name])
