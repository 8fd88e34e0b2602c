"""Run reward-bench 0.1.4's own input building on rows.jsonl; write expected_ids.json.

reward-bench pins transformers 4.51, so this runs once in a throwaway
environment, never in the test suite (which reads the JSON it wrote).
The command that made expected_ids.json:

    python3.11 -m venv /tmp/rb-venv
    /tmp/rb-venv/bin/pip download --no-deps -d /tmp/rbdl rewardbench==0.1.4
    /tmp/rb-venv/bin/pip install --no-deps /tmp/rbdl/rewardbench-0.1.4-py3-none-any.whl
    /tmp/rb-venv/bin/pip install transformers==4.51.0
    # torch and numpy from the project's venv, behind the throwaway venv's own packages:
    echo $PWD/.venv/lib/python3.11/site-packages > /tmp/rb-venv/lib/python3.11/site-packages/zz_w16_torch.pth
    /tmp/rb-venv/bin/python tests/data/rewardbench/make_expected.py ~/.cache/dpo-plugins/smollm2-135m-instruct

What runs is reward-bench's code, unmodified: ``prepare_dialogue_from_tokenizer``
(rewardbench/utils.py) renders each row, then ``DPOInference.tokenize_row``
(rewardbench/dpo.py) tokenizes it, after the tokenizer set-up of
scripts/run_dpo.py (pad = EOS; BOS = EOS when missing). The two modules are
loaded from their files so that rewardbench/__init__.py (which imports
every model class reward-bench supports) is not needed; the names
rewardbench/utils.py imports but these two functions never call (datasets,
fastchat's Conversation, the reward-model registry) are given empty
stand-ins for the same reason.
"""

import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tokenizer_for_transformers_4(source: Path) -> str:
    """The tokenizer files with the class name SmolLM2's hub config has (transformers 5 saves its own name)."""
    import tempfile

    target = Path(tempfile.mkdtemp(prefix="rb-tokenizer-"))
    for name in ("tokenizer.json", "chat_template.jinja", "special_tokens_map.json"):
        if (source / name).exists():
            (target / name).write_bytes((source / name).read_bytes())
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "GPT2Tokenizer"
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return str(target)


def stand_ins():
    """reward-bench's rewardbench/utils.py and rewardbench/dpo.py, loaded from their files."""
    package = Path(importlib.util.find_spec("rewardbench").submodule_search_locations[0])
    for name, attributes in {"datasets": ["Dataset", "DatasetDict", "Value", "concatenate_datasets", "load_dataset",
                                          "load_from_disk"],
                             "fastchat": [], "fastchat.conversation": ["Conversation"],
                             "rewardbench": [], "rewardbench.models": ["REWARD_MODEL_CONFIG"]}.items():
        stand_in = types.ModuleType(name)
        for attribute in attributes:
            setattr(stand_in, attribute, None)
        sys.modules[name] = stand_in
    return load("rewardbench_utils", package / "utils.py"), load("rewardbench_dpo", package / "dpo.py")


if __name__ == "__main__":
    utils, dpo = stand_ins()

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_for_transformers_4(Path(sys.argv[1])))
    tokenizer.pad_token = tokenizer.eos_token  # scripts/run_dpo.py
    if tokenizer.bos_token is None:
        tokenizer.bos_token_id = tokenizer.eos_token_id
        tokenizer.pad_token_id = tokenizer.eos_token_id

    model = torch.nn.Linear(1, 1)  # tokenize_row needs only model.config.is_encoder_decoder
    model.config = types.SimpleNamespace(is_encoder_decoder=False)
    inference = dpo.DPOInference(model, None, tokenizer=tokenizer, accelerator=None, ref_free_norm="sum")

    expected = []
    for line in (HERE / "rows.jsonl").read_text(encoding="utf-8").splitlines():
        example = utils.prepare_dialogue_from_tokenizer(json.loads(line), tokenizer)
        batch = inference.tokenize_row({"prompt": example["prompt"], "text_chosen": example["text_chosen"],
                                        "text_rejected": example["text_rejected"]})
        expected.append({key: batch[key] for key in ("chosen_input_ids", "chosen_labels", "rejected_input_ids",
                                                     "rejected_labels")})
    versions = {"rewardbench": "0.1.4", "transformers": __import__("transformers").__version__}
    (HERE / "expected_ids.json").write_text(json.dumps({"made_by": versions, "rows": expected}) + "\n")
    print(f"wrote {len(expected)} rows")
