"""The packed, prefix-shared forward equals the plain two-row computation.

Pairs come from a real TRL ``DPOTrainer``'s ``train_dataset`` (multi-turn
prompts, tools in the chat template, very uneven lengths); the reference is
written here the plain way: each truncated ``[prompt + completion]`` its own
row, full logits, ``log_softmax``, gather, sum over completion tokens.
"""

from __future__ import annotations

import random

import pytest
import torch

from dpo_plugins.adapters import packing
from dpo_plugins.adapters.tokenization import truncate
from dpo_plugins.errors import DpoPluginsError

from conftest import build_tiny_model

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


# SmolLM2's own template ignores ``tools``; this ChatML variant renders them, as tool-using templates do.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _rows():
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    assistant = lambda text: {"role": "assistant", "content": text}  # noqa: E731
    long_text = " ".join(f"word{i}" for i in range(150))
    return [
        {"prompt": [user("Hi!")], "chosen": [assistant("Hello, how can I help?")], "rejected": [assistant("Go away.")]},
        {
            "prompt": [
                {"role": "system", "content": "You are terse."},
                user("What is 2+2?"),
                assistant("4."),
                user("And times 3?"),
            ],
            "chosen": [assistant("12.")],
            "rejected": [assistant("It is " + long_text)],
        },
        {
            "prompt": [
                user("Weather in Paris?"),
                assistant('{"name": "get_weather", "arguments": {"city": "Paris"}}'),
                {"role": "tool", "content": "18C, cloudy"},
            ],
            "chosen": [assistant("Let me check the weather tool for Paris.")],
            "rejected": [assistant("No idea.")],
            "tools": TOOLS,
        },
        {"prompt": [user("Tell me a long story. " + long_text)], "chosen": [assistant("Once.")], "rejected": [assistant("No.")]},
        {"prompt": [user("x")], "chosen": [assistant(long_text)], "rejected": [assistant(long_text[:40])]},
    ]


@pytest.fixture(scope="module")
def trl_pairs(tokenizer, tmp_path_factory):
    """Tokenized pairs exactly as a real DPOTrainer prepares them (no truncation: the collator truncates)."""
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = TOOL_TEMPLATE

    rows = _rows()
    for row in rows:
        row.setdefault("tools", None)
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("dpo")), report_to=[], use_cpu=True, bf16=False, max_length=None
    )
    trainer = DPOTrainer(
        model=build_tiny_model(tokenizer),
        ref_model=build_tiny_model(tokenizer),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    return [{k: list(r[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in trainer.train_dataset]


def plain_pair_logps(model, pairs, max_length=None, truncation_mode="keep_start"):
    """The unshared reference: one unpadded row per sequence, full logits."""
    chosen, rejected, chosen_len, rejected_len = [], [], [], []
    for pair in pairs:
        for completion, sums, lengths in ((pair["chosen_ids"], chosen, chosen_len), (pair["rejected_ids"], rejected, rejected_len)):
            ids, mask = truncate(pair["prompt_ids"], completion, max_length, truncation_mode)
            ids, mask = torch.tensor([ids]), torch.tensor(mask)
            logits = model(input_ids=ids).logits[0, :-1].float()
            token_logps = logits.log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
            sums.append((token_logps * mask[1:]).sum())
            lengths.append(float(mask.sum()))
    return packing.PairLogps.without_reference(torch.stack(chosen), torch.stack(rejected), torch.tensor(chosen_len), torch.tensor(rejected_len))


def assert_same(packed, plain):
    # float32 sums of ~100 terms of ~10 each: equal to 1e-5 relative
    torch.testing.assert_close(packed.chosen_logps, plain.chosen_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed.rejected_logps, plain.rejected_logps, rtol=1e-5, atol=1e-5)
    assert packed.chosen_lengths.tolist() == plain.chosen_lengths.tolist()
    assert packed.rejected_lengths.tolist() == plain.rejected_lengths.tolist()


def test_trainer_pairs_really_are_multi_turn_tool_and_uneven(trl_pairs, tokenizer):
    assert len(trl_pairs) == 5
    assert "Tools: [{" in tokenizer.decode(trl_pairs[2]["prompt_ids"])
    assert "<|im_start|>tool" in tokenizer.decode(trl_pairs[2]["prompt_ids"])
    assert tokenizer.decode(trl_pairs[1]["prompt_ids"]).count("<|im_start|>user") == 2
    assert "Tools" not in tokenizer.decode(trl_pairs[0]["prompt_ids"])
    lengths = [len(p["rejected_ids"]) for p in trl_pairs]
    assert max(lengths) > 20 * min(lengths)


@pytest.mark.parametrize(
    "max_length, truncation_mode, token_budget",
    [
        (None, "keep_start", 512),  # several pairs per row
        (None, "keep_start", 1),  # one block per row
        (60, "keep_start", 100),  # chosen/rejected cut; the long prompt fills max_length
        (60, "keep_end", 100),  # prompts cut differently: unshared blocks
        (400, "keep_end", 64),  # blocks longer than the budget
    ],
)
def test_packed_equals_plain_two_row(trl_pairs, tokenizer, max_length, truncation_mode, token_budget):
    model = build_tiny_model(tokenizer, seed=1).eval()
    with torch.no_grad():
        packed = packing.packed_pair_logps(model, trl_pairs, max_length, truncation_mode, token_budget=token_budget, logit_chunk=37)
        plain = plain_pair_logps(model, trl_pairs, max_length, truncation_mode)
    assert_same(packed, plain)
    if max_length == 60 and truncation_mode == "keep_start":
        assert packed.chosen_lengths[3] == 0 and packed.chosen_logps[3] == 0  # TRL would drop this row; still defined


def test_gradients_equal_plain_two_row(trl_pairs, tokenizer):
    weights = torch.randn(2, len(trl_pairs), generator=torch.Generator().manual_seed(0))
    grads = []
    for compute in (packing.packed_pair_logps, plain_pair_logps):
        model = build_tiny_model(tokenizer, seed=2)
        out = compute(model, trl_pairs, 120, "keep_start")
        ((out.chosen_logps * weights[0]).sum() + (out.rejected_logps * weights[1]).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    packed, plain = grads
    assert packed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], rtol=1e-4, atol=1e-5, msg=name)


def test_rejected_tokens_never_see_chosen_tokens(tokenizer):
    """Changing the chosen completion leaves every rejected log-prob unchanged (and vice versa)."""
    model = build_tiny_model(tokenizer, seed=3).eval()
    rng = random.Random(0)
    prompt = [rng.randrange(1000) for _ in range(9)]
    rejected = [rng.randrange(1000) for _ in range(7)]
    with torch.no_grad():
        a = packing.packed_pair_logps(model, [{"prompt_ids": prompt, "chosen_ids": [5, 6, 7], "rejected_ids": rejected}])
        b = packing.packed_pair_logps(model, [{"prompt_ids": prompt, "chosen_ids": [9] * 30, "rejected_ids": rejected}])
    assert a.rejected_logps.item() == pytest.approx(b.rejected_logps.item(), abs=1e-5)
    assert a.chosen_logps.item() != pytest.approx(b.chosen_logps.item(), abs=1e-3)


def test_layout_shares_the_prompt_and_continues_positions():
    [block] = _pair_blocks(0, [1, 2, 3], [4, 5], [6, 7, 8])
    assert block.tokens == (1, 2, 3, 4, 6, 7)  # the last token of each branch predicts nothing
    assert block.positions == (0, 1, 2, 3, 3, 4)
    # chosen[0] and rejected[0] are both predicted by the last prompt token
    assert block.targets == ((2, 4, 0), (3, 5, 0), (2, 6, 1), (4, 7, 1), (5, 8, 1))


def test_packing_fills_rows_up_to_the_budget_without_padding():
    blocks = [packing.Block(i, (0,) * n, tuple(range(n)), (0,) * n, ()) for i, n in enumerate([5, 3, 4, 2, 9])]
    rows = packing.pack(blocks, token_budget=7)
    assert [[b.pair for b in row] for row in rows] == [[4], [0, 3], [2, 1]]
    assert all(sum(map(len, row)) <= 7 for row in rows if len(row) > 1)


def test_block_diagonal_mask(tokenizer):
    model = build_tiny_model(tokenizer)
    blocks = [
        _pair_blocks(0, [1, 2], [3, 4], [5, 6])[0],
        _pair_blocks(1, [7], [8, 8], [9])[0],
    ]
    _, positions, mask = packing.row_inputs(blocks, model)
    assert positions.tolist() == [[0, 1, 2, 2, 0, 1]]
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # chosen token
        [1, 1, 0, 1, 0, 0],  # rejected token: sees the prompt, not chosen
        [0, 0, 0, 0, 1, 0],  # second pair: its own block
        [0, 0, 0, 0, 1, 1],
    ]


def test_all_completions_truncated_away_is_still_differentiable(tokenizer):
    model = build_tiny_model(tokenizer)
    out = packing.packed_pair_logps(model, [{"prompt_ids": [1] * 10, "chosen_ids": [2], "rejected_ids": [3]}], max_length=5)
    assert out.chosen_logps.tolist() == [0.0] and out.chosen_lengths.tolist() == [0.0]
    out.chosen_logps.sum().backward()


def test_bad_truncation_mode_is_a_clear_error(tokenizer):
    with pytest.raises(DpoPluginsError, match="keep_start, keep_end"):
        packing.packed_pair_logps(build_tiny_model(tokenizer), [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}], 4, "keep_middle")


def test_eager_attention_gets_an_additive_mask(trl_pairs, tokenizer):
    model = build_tiny_model(tokenizer, seed=4, attn_implementation="eager").eval()
    with torch.no_grad():
        assert_same(packing.packed_pair_logps(model, trl_pairs, 200), plain_pair_logps(model, trl_pairs, 200))


@pytest.mark.parametrize("max_length, truncation_mode", [(None, "keep_start"), (60, "keep_start"), (60, "keep_end")])
def test_a_trl_collated_batch_gives_the_same_logps(trl_pairs, tokenizer, max_length, truncation_mode):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=max_length, truncation_mode=truncation_mode)
    model = build_tiny_model(tokenizer, seed=5).eval()
    with torch.no_grad():
        from_batch = packing.collated_pair_logps(model, collate(trl_pairs))
        plain = plain_pair_logps(model, trl_pairs, max_length, truncation_mode)
    assert_same(from_batch, plain)


@pytest.mark.parametrize("max_length, truncation_mode", [(None, "keep_start"), (60, "keep_end")])
def test_equal_to_the_evals_plain_two_row_implementation(trl_pairs, tokenizer, max_length, truncation_mode):
    from dpo_plugins.evals import logps

    model = build_tiny_model(tokenizer, seed=6).eval()
    with torch.no_grad():
        packed = packing.packed_pair_logps(model, trl_pairs, max_length, truncation_mode)
        plain = logps.pair_logps(model, trl_pairs, max_length, truncation_mode, forward="plain")
    assert isinstance(packed, logps.PairLogps)
    assert_same(packed, logps.PairLogps.without_reference(*(t.float() for t in (plain.chosen_logps, plain.rejected_logps, plain.chosen_lengths, plain.rejected_lengths))))


def test_float64_scoring_matches_the_plain_path_and_is_refused_under_gradient(trl_pairs, tokenizer):
    from dpo_plugins.evals import logps

    model = build_tiny_model(tokenizer, seed=8)
    with torch.no_grad():
        packed = packing.packed_pair_logps(model, trl_pairs, logps_dtype=torch.float64)
        plain = logps.pair_logps(model, trl_pairs, forward="plain")
    assert packed.chosen_logps.dtype == torch.float64
    torch.testing.assert_close(packed.chosen_logps, plain.chosen_logps, rtol=0, atol=1e-6)
    torch.testing.assert_close(packed.rejected_logps, plain.rejected_logps, rtol=0, atol=1e-6)
    with pytest.raises(DpoPluginsError, match="without gradient"):
        packing.packed_pair_logps(model, trl_pairs, logps_dtype=torch.float64)


def test_a_bfloat16_model_gets_a_float32_log_softmax_and_trains(trl_pairs, tokenizer):
    """Half-precision weights: sums in float32 (not bfloat16), close to a float64 log-softmax, gradients in bf16."""
    from dpo_plugins.evals import logps

    model = build_tiny_model(tokenizer, seed=9).to(torch.bfloat16)
    packed = packing.packed_pair_logps(model, trl_pairs[:4], 128)
    assert packed.chosen_logps.dtype == torch.float32
    (packed.chosen_logps.sum() - packed.rejected_logps.sum()).backward()
    assert model.lm_head.weight.grad.dtype == torch.bfloat16 and model.lm_head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        plain = logps.pair_logps(model, trl_pairs[:4], 128, forward="plain")
    # Packed and plain rows take different bf16 kernels: their hidden states agree to bf16 precision only.
    torch.testing.assert_close(packed.chosen_logps.detach().double(), plain.chosen_logps, rtol=2e-2, atol=0.5)


def test_a_model_it_cannot_serve_is_refused_not_miscomputed(trl_pairs, tokenizer):
    model = build_tiny_model(tokenizer, seed=10)
    model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping=30.0" in packing.unsupported_reason(model)
    with pytest.raises(DpoPluginsError, match="use the stock forward for this model"):
        packing.packed_pair_logps(model, trl_pairs[:1])


def _pair_blocks(index, prompt, chosen, rejected):
    return packing.sequence_blocks(index, *truncate(prompt, chosen), *truncate(prompt, rejected))
