"""Online-DPO sampling throughput: batched K-sample generation vs one prompt, one sample per ``generate``.

Both sides make the same number of samples (``prompts x k``) with the same
model, decoding settings and token counting (:func:`dpo_plugins.evals.
sampling.sample_batch`: generated tokens up to and including EOS). "Plain" is
what a loop over prompts does: one unpadded ``generate`` call per sample
(``sample_batch`` with one prompt and k = 1, which pads nothing). "Batched" is
what ``dpo iterate`` runs: ``--batch-size`` prompts left-padded into one call
returning k sequences each, with the KV cache. Sampled text differs between
the two (another random stream), so the lengths do too: the ratio is of
tokens per second, not of wall time.

    python -m benchmarks.iterate_generation --prompts 64 --k 4 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import hh_rows, load_smollm2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local checkpoint (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", type=int, default=64, help="distinct HH-RLHF prompts")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batched generate call")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)

    import torch

    from dpo_plugins.evals.judging import GenerationSettings, unique_prompts
    from dpo_plugins.evals.sampling import sample_batch

    model, tokenizer = load_smollm2(args.model)
    model.eval()
    prompts = unique_prompts(hh_rows(400))[: args.prompts]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0)

    started = time.perf_counter()
    plain_tokens = 0
    for index, prompt in enumerate(prompts):
        for sample in range(args.k):
            plain_tokens += sample_batch(model, tokenizer, [prompt], 1, settings, seed=index * args.k + sample)[0][0].tokens
    plain_seconds = time.perf_counter() - started

    started = time.perf_counter()
    batched_tokens = 0
    for start in range(0, len(prompts), args.batch_size):
        groups = sample_batch(model, tokenizer, prompts[start:start + args.batch_size], args.k, settings, seed=start)
        batched_tokens += sum(s.tokens for group in groups for s in group)
    batched_seconds = time.perf_counter() - started

    result = {
        "prompts": len(prompts), "k": args.k, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "plain": {"seconds": round(plain_seconds, 2), "tokens": plain_tokens,
                  "tokens_per_s": round(plain_tokens / plain_seconds, 2)},
        "batched": {"seconds": round(batched_seconds, 2), "tokens": batched_tokens,
                    "tokens_per_s": round(batched_tokens / batched_seconds, 2)},
    }
    result["ratio_tokens_per_s"] = round(result["batched"]["tokens_per_s"] / result["plain"]["tokens_per_s"], 2)
    if not args.json:
        print(f"plain   (1 prompt x 1 sample per call): {plain_tokens} tokens in {plain_seconds:.1f} s = "
              f"{result['plain']['tokens_per_s']} tokens/s")
        print(f"batched ({args.batch_size} prompts x {args.k} per call):    {batched_tokens} tokens in "
              f"{batched_seconds:.1f} s = {result['batched']['tokens_per_s']} tokens/s")
        print(f"ratio (tokens/s): {result['ratio_tokens_per_s']}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
