"""The GPU check: bf16 training with the packed forward against stock TRL, one JSON line out.

For when a GPU is lent (no code path of this project has run on one yet):
SmolLM2-135M (real weights) and a ~1B Llama config (random weights), each
trained by stock ``DPOTrainer`` and by ``PluginDPOTrainer`` (packed,
prefix-shared forward, per-step reference as TRL) from the same weights on
the same batches; then one pair of ~2k and one of ~8k tokens; then the
prefix-shared attention masks against TRL's two-row forward in float32 on
the device. The fields are documented in docs/benchmarks.md.

    python -m benchmarks.gpu_check                      # CUDA, bf16; at most ~8 minutes on one H100
    python -m benchmarks.gpu_check --device cpu --tiny  # CI: a tiny random model, so the script cannot rot

Nothing is asserted here: the JSON says what ran and what was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time

import torch

from benchmarks.common import hh_rows, load_smollm2
from benchmarks.train_throughput import Stepper, batches_in_trl_order, make_trainer

# bf16 keeps ~3 significant digits: per-pair log-prob sums over hundreds of tokens differ by up to ~0.5
# between two correct forwards (the health check's bf16 tolerance), i.e. ~0.05 in a β=0.1 sigmoid loss.
BF16_LOSS_TOLERANCE = 0.05
FP32_LOGP_TOLERANCE = 1e-3
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM datasheet, dense (no sparsity)
LONG_PAIRS = (2048, 8192)
TINY_LONG_PAIRS = (256, 1024)  # --tiny on CPU: stock TRL's 8k-token rows would hold 3 GB of float32 logits


def model_configs(tokenizer, tiny: bool) -> dict:
    """name -> a LlamaConfig to build with random weights (None: the real SmolLM2 weights)."""
    from transformers import LlamaConfig

    def llama(**sizes):
        return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           max_position_embeddings=max(LONG_PAIRS) + 256, tie_word_embeddings=True, **sizes)

    if tiny:
        return {"tiny": llama(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2)}
    return {"smollm2-135m": None,
            "llama-1b-random": llama(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                     num_attention_heads=32, num_key_value_heads=8)}


def build(config, base, dtype, device):
    from transformers import AutoModelForCausalLM

    if config is None:
        model = copy.deepcopy(base)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype)


def dpo_args(tmp, options, batch_size, max_length):
    from trl import DPOConfig

    return DPOConfig(output_dir=tmp, per_device_train_batch_size=batch_size, max_length=max_length,
                     learning_rate=1e-5, gradient_checkpointing=False, bf16=options.dtype == "bf16",
                     use_cpu=options.device == "cpu", report_to=[], seed=0, disable_tqdm=True, beta=0.1)


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def peak_memory(device, out: dict, key: str):
    """``out[key]``: the peak GPU memory allocated inside the block, in GiB (None off CUDA)."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield
    out[key] = round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None


def count_packed(calls: list):
    """Count the packed forward's calls (it still runs)."""
    from dpo_plugins.adapters import packing

    original = packing.collated_pair_logps

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    packing.collated_pair_logps = counting
    return original


def train_both(options, model_config, base, tokenizer, rows, batch_size, max_length, steps) -> dict:
    """Stock vs ours from the same weights on the same batches: losses, seconds, peak memory, tokens."""
    from datasets import Dataset

    dtype = torch.bfloat16 if options.dtype == "bf16" else torch.float32
    dataset = Dataset.from_list(rows)
    result = {"losses": {}, "seconds": {}, "peak_gib": {}}
    with tempfile.TemporaryDirectory() as tmp:
        batches = None
        for kind in ("stock", "packed"):
            model = build(model_config, base, dtype, options.device)
            reference = build(model_config, base, dtype, options.device)
            trainer = make_trainer(kind, model, reference, tokenizer, dataset, dpo_args(tmp, options, batch_size, max_length))
            if batches is None:  # the stock trainer's own order, for both
                batches = [trainer._prepare_inputs(b) for b in batches_in_trl_order(trainer, steps + 1)]
                result["tokens_per_step"] = [int(b["attention_mask"].sum()) for b in batches[1:]]
                result["attn_implementation"] = model.config._attn_implementation
            stepper = Stepper(trainer)
            calls: list = []
            original = count_packed(calls)
            try:
                stepper.step(batches[0])  # warm-up (kernels, allocator); not timed, not compared
                with peak_memory(options.device, result["peak_gib"], kind):
                    synchronize(options.device)
                    start = time.perf_counter()
                    result["losses"][kind] = [stepper.step(batch) for batch in batches[1:]]
                    synchronize(options.device)
                    result["seconds"][kind] = round(time.perf_counter() - start, 4)
            finally:
                from dpo_plugins.adapters import packing

                packing.collated_pair_logps = original
            if kind == "packed":
                result["packed_forward_ran"] = len(calls) > 0
            result["parameters"] = sum(p.numel() for p in model.parameters())
            del trainer, stepper, model, reference
    tokens = sum(result["tokens_per_step"])
    result["speed_ratio"] = round(result["seconds"]["stock"] / result["seconds"]["packed"], 3)
    result["tokens_per_s"] = {kind: round(tokens / seconds, 1) for kind, seconds in result["seconds"].items()}
    result["max_loss_diff"] = max(abs(a - b) for a, b in zip(result["losses"]["stock"], result["losses"]["packed"]))
    result["losses_within_tolerance"] = result["max_loss_diff"] <= BF16_LOSS_TOLERANCE
    peak = options.peak_tflops or (H100_BF16_DENSE_TFLOPS if options.device == "cuda" else None)
    # 6 N FLOPs per token (forward + backward of the policy) + 2 N (the reference's forward), over the tokens of
    # the stock two-row batch (non-padding): the useful work, so the packed forward's savings show as higher MFU.
    result["mfu_estimate"] = ({kind: round(8 * result["parameters"] * tps / (peak * 1e12), 4)
                              for kind, tps in result["tokens_per_s"].items()} if peak else None)
    return result


def long_pair(tokenizer, total_tokens: int) -> dict:
    """One conversational pair of about ``total_tokens`` tokens per side (prompt + response)."""
    words = " ".join(f"item{i}" for i in range(total_tokens))
    ids = tokenizer(words, add_special_tokens=False)["input_ids"][: total_tokens - 160]
    prompt = tokenizer.decode(ids)
    return {"prompt": [{"role": "user", "content": f"Summarise this list: {prompt}"}],
            "chosen": [{"role": "assistant", "content": "A list of numbered items. " * 10}],
            "rejected": [{"role": "assistant", "content": "I cannot read lists. " * 10}]}


def check_masks(options, model_config, base, tokenizer, rows) -> dict:
    """The prefix-shared masks on the device: packed log-probs against TRL's two-row forward, float32."""
    from dpo_plugins.adapters.packing import collated_pair_logps

    with tempfile.TemporaryDirectory() as tmp:
        from datasets import Dataset

        model = build(model_config, base, torch.float32, options.device).eval()
        reference = build(model_config, base, torch.float32, options.device).eval()
        fp32 = argparse.Namespace(**{**vars(options), "dtype": "fp32"})
        trainer = make_trainer("stock", model, reference, tokenizer, Dataset.from_list(rows), dpo_args(tmp, fp32, 4, 1024))
        batch = trainer._prepare_inputs(batches_in_trl_order(trainer, 1)[0])
        with torch.no_grad():
            packed = collated_pair_logps(model, batch)
            mask = batch["completion_mask"]
            labels = batch["input_ids"].masked_fill(mask == 0, -100)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            token = torch.log_softmax(logits, -1).gather(-1, labels[:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1)
            two_row = (token * (labels[:, 1:] != -100)).sum(-1)
        diff = (torch.cat([packed.chosen_logps, packed.rejected_logps]).float() - two_row).abs().max().item()
    return {"device": str(batch["input_ids"].device), "max_abs_logp_diff_fp32": diff,
            "agree": diff <= FP32_LOGP_TOLERANCE}


def run(options) -> dict:
    base, tokenizer = load_smollm2(options.model)
    rows = hh_rows(options.pairs)
    out = {"device": options.device, "card": torch.cuda.get_device_name() if options.device == "cuda" else "cpu",
           "dtype": options.dtype, "torch": torch.__version__, "loss_tolerance": BF16_LOSS_TOLERANCE, "models": {}}
    for name, config in model_configs(tokenizer, options.tiny).items():
        start = time.perf_counter()
        entry = train_both(options, config, base, tokenizer, rows, options.batch_size, 1024, options.steps)
        print(f"{name}: training done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        entry["long_pairs"] = {}
        for length in TINY_LONG_PAIRS if options.tiny else LONG_PAIRS:
            long = train_both(options, config, base, tokenizer, [long_pair(tokenizer, length)] * 2, 1, length + 64, 1)
            entry["long_pairs"][str(length)] = {key: long[key] for key in (
                "tokens_per_step", "seconds", "peak_gib", "speed_ratio", "max_loss_diff", "losses_within_tolerance",
                "packed_forward_ran")}
        print(f"{name}: long pairs done", file=sys.stderr, flush=True)
        entry["prefix_masks"] = check_masks(options, config, base, tokenizer, rows)
        entry["wall_s"] = round(time.perf_counter() - start, 1)
        out["models"][name] = entry
        print(f"{name}: done in {entry['wall_s']}s", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of SmolLM2 and the 1B config")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--model", help="SmolLM2 checkpoint (default: the embedded build); its tokenizer is used")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per trainer (after one warm-up step)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: H100's, on CUDA)")
    parser.add_argument("--json", action="store_true", help="accepted for the benchmark tests; output is always JSON")
    options = parser.parse_args(argv)
    if options.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --device cpu --tiny to check the script itself)", file=sys.stderr)
        return 1
    print(json.dumps(run(options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
