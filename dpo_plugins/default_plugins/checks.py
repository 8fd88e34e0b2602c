"""Built-in checks of a merged checkpoint (the pitfalls mergers hit).

Each check returns ``(passed, message)``; the hook turns them into
``CheckResult`` records, and a check that raises fails. A failure vetoes the
checkpoint. Plugins add their own through the same ``check_merged_model``
hook.
"""

from __future__ import annotations

import json

from dpo_plugins.hookspecs import hookimpl
from dpo_plugins.specs import CheckResult

PROBE = [{"role": "user", "content": "Hi"}]


@hookimpl
def check_merged_model(checkpoint):
    for name, check in CHECKS.items():
        try:
            passed, message = check(checkpoint)
        except Exception as error:  # a checkpoint that cannot even be read fails the check
            passed, message = False, f"{type(error).__name__}: {error}"
        yield CheckResult(name, passed, message)


def chat_template(checkpoint):
    template = checkpoint.tokenizer().chat_template
    if not template:
        return False, "the tokenizer has no chat template"
    return True, f"{len(template)} characters"


def generation_config(checkpoint):
    path = checkpoint.path / "generation_config.json"
    if not path.is_file():
        return False, "generation_config.json is missing"
    settings = json.loads(path.read_text())
    return True, f"eos_token_id={settings.get('eos_token_id')}"


def vocab_matches_embeddings(checkpoint):
    """Every token id must index an embedding row, and config.vocab_size must
    equal the rows. More rows than tokens is fine: checkpoints pad
    embeddings to a multiple of 64 or 128."""
    tokens = len(checkpoint.tokenizer())
    rows = checkpoint.model().get_input_embeddings().weight.shape[0]
    configured = checkpoint.config().get("vocab_size")
    if tokens > rows:
        return False, f"the tokenizer has {tokens} tokens but the embeddings have {rows} rows"
    if configured != rows:
        return False, f"config.json says vocab_size={configured} but the embeddings have {rows} rows"
    return True, f"{tokens} tokens, {rows} embedding rows"


def dtype_as_requested(checkpoint):
    """The floating-point weights on disk are in the requested dtype."""
    from safetensors import safe_open

    found = set()
    for shard in sorted(checkpoint.path.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            for name in handle.keys():
                dtype = handle.get_slice(name).get_dtype()
                if dtype.startswith(("F", "BF")):
                    found.add(dtype)
    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
    stored = sorted(names.get(d, d) for d in found)
    if not stored:
        return False, "no floating-point weights in *.safetensors"
    if checkpoint.dtype is None:
        return True, f"no dtype requested; weights are {', '.join(stored)}"
    if stored != [checkpoint.dtype]:
        return False, f"requested {checkpoint.dtype}, weights are {', '.join(stored)}"
    return True, f"weights are {checkpoint.dtype}"


def loads_and_generates(checkpoint):
    """Loads with transformers and greedily generates one finite-logit token."""
    import torch

    tokenizer, model = checkpoint.tokenizer(), checkpoint.model()
    if tokenizer.chat_template:
        inputs = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        inputs = tokenizer("Hi", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    if not torch.isfinite(output.scores[0]).all():
        return False, "the next-token logits are not finite"
    token = output.sequences[0, inputs["input_ids"].shape[1]:]
    return True, f"generated {tokenizer.decode(token)!r}"


CHECKS = {
    "chat_template": chat_template,
    "generation_config": generation_config,
    "vocab_matches_embeddings": vocab_matches_embeddings,
    "dtype": dtype_as_requested,
    "loads_and_generates": loads_and_generates,
}
