"""A ``dpo train`` run once its settings and data are known: models, LoRA, SFT-first, the plugin trainer, outputs.

Everything here uses TRL / transformers / PEFT public APIs; the one class
that reaches into TRL internals is :class:`~dpo_plugins.adapters.trl.
PluginDPOTrainer`. The output directory holds what ``transformers.Trainer``
writes (checkpoints, ``trainer_state.json``, ``train_results.json``) and the
model saved with ``save_pretrained`` (the adapter alone with ``--lora``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

from dpo_plugins.atomic import atomic_directory, mark, reclaim
from dpo_plugins.errors import DpoPluginsError

from .models import load_model, load_tokenizer, resolve_model, save_complete_model
from .distributed import is_main_process, wait_for_everyone, world_size
from .loss_selection import select_losses
from .trl import PluginDPOTrainer

logger = logging.getLogger("dpo_plugins.train")
SFT_DONE = "dpo-plugins-sft-complete.json"
SFT_MODEL = "sft-model"


def run_training(settings, read_rows: Callable[[str, Optional[str]], list]) -> Path:
    """Train as ``settings`` say; returns the output directory.

    ``read_rows(path, format)`` reads ``--data`` / ``--eval-data`` as TRL rows
    (the formats layer's ``read_trl_rows``), after the losses and options
    were checked, so a bad option is reported before any data is read.
    """
    options, args = settings.options, settings.dpo
    _check_combinations(options, args)
    terms = select_losses(args, options.loss_param, options.ref_model is not None)
    args.precompute_ref_log_probs = precompute_reference(terms, args, options)
    resume = _resume_checkpoint(args)
    train_rows = read_rows(options.data, options.from_format)
    eval_rows = read_rows(options.eval_data, options.from_format) if options.eval_data else None

    model_path = resolve_model(options.model)
    ref_path = resolve_model(options.ref_model) if options.ref_model else None
    if resume is None and is_main_process():
        # This run owns the folder: an earlier run's checkpoints, model and metrics go (a matching SFT model
        # is kept, see run_sft), so nothing stale is read as this run's.
        reclaim(args.output_dir, keep=(SFT_MODEL,) if options.sft_first else ())
    wait_for_everyone()
    if options.sft_first:
        model_path = run_sft(model_path, train_rows, options, args)
    trainer = _build_trainer(model_path, ref_path, train_rows, eval_rows, options, args, terms)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    mark(args.output_dir, "dpo train")
    result = trainer.train(resume_from_checkpoint=resume)
    save_complete_model(lambda folder: trainer.save_model(str(folder)), Path(args.output_dir),
                        is_main=trainer.is_world_process_zero(), barrier=trainer.accelerator.wait_for_everyone)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if eval_rows is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return Path(args.output_dir)


def precompute_reference(terms, args, options) -> bool:
    """Whether ``dpo train`` computes the reference log-probs once, before training.

    As ``--precompute-ref-log-probs`` says when given. Otherwise yes
    whenever the losses use a fixed reference and one process trains: the
    reference is then one no-grad pass over the data, stored in the on-disk
    cache (:mod:`.ref_cache`) and read back by later runs (a β or loss
    sweep) instead of a reference forward in every step. No with
    ``--trl-forward`` (stock TRL's default), with ``sync_ref_model`` (the
    reference moves), with reference-free losses, and under several
    processes or FSDP / DeepSpeed, as stock TRL does there: the reference
    runs in each step, on each process's share of the batch. Asked for
    under several processes (DDP), the processes share the precompute and
    its one cache entry (:mod:`.ref_cache`).
    """
    if args.precompute_ref_log_probs is not None:
        return args.precompute_ref_log_probs
    one_process = world_size() == 1 and not args.fsdp and not args.deepspeed
    uses_reference = any(term.needs_reference for term in terms)
    return uses_reference and one_process and not args.sync_ref_model and not options.trl_forward


def _check_combinations(options, args) -> None:
    problems = []
    if not options.data:
        problems.append("--data is required (preference data in any registered format; see `dpo plugins`)")
    if options.sft_first and options.ref_model:
        problems.append("--sft-first uses the SFT model as the reference; do not also give --ref-model")
    if args.eval_strategy != "no" and not options.eval_data:
        problems.append(f"eval_strategy={args.eval_strategy.value!r} needs --eval-data")
    if args.sync_ref_model and options.lora:
        problems.append("sync_ref_model: not supported with --lora (the reference is the adapter-free model)")
    if problems:
        raise DpoPluginsError("unsupported option combination:\n" + "\n".join(problems))


def _resume_checkpoint(args):
    """``--resume-from-checkpoint last`` (or true) -> the newest checkpoint in output_dir."""
    value = args.resume_from_checkpoint
    if value is None:
        return None
    if str(value).lower() in ("last", "true"):
        found = last_complete_checkpoint(args.output_dir)
        if found is None:
            raise DpoPluginsError(f"--resume-from-checkpoint {value}: no complete checkpoint-* directory in "
                                  f"{args.output_dir}")
        logger.info("resuming from %s", found)
        return found
    if not os.path.isdir(value):
        raise DpoPluginsError(f"--resume-from-checkpoint {value}: no such checkpoint directory")
    if not _is_complete(Path(value)):
        raise DpoPluginsError(f"--resume-from-checkpoint {value}: incomplete checkpoint (no readable "
                              "trainer_state.json; the run was probably killed while saving it)")
    return value


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that was completely written.

    A run killed while saving leaves a newer, half-written checkpoint behind;
    transformers' own ``get_last_checkpoint`` would pick it and the resume
    would crash. ``Trainer`` writes ``trainer_state.json`` after the weights,
    optimizer and RNG state, so a readable one marks a complete checkpoint.
    """
    numbered = [path for path in Path(output_dir).glob("checkpoint-*") if path.name[len("checkpoint-"):].isdigit()]
    for path in sorted(numbered, key=lambda path: int(path.name[len("checkpoint-"):]), reverse=True):
        if _is_complete(path):
            return str(path)
        logger.warning("skipping %s: incomplete (no readable trainer_state.json)", path)
    return None


def _is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _dtype(args):
    import torch

    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def _load_model(path: Path, args):
    return load_model(path, _dtype(args))


def _lora_config(options):
    from peft import LoraConfig

    modules = options.lora_target_modules
    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=modules[0] if modules == ["all-linear"] else list(modules),
        task_type="CAUSAL_LM",
    )


def _build_trainer(model_path, ref_path, train_rows, eval_rows, options, args, terms):
    tokenizer = load_tokenizer(model_path)
    model = _load_model(model_path, args)
    ref_model = _load_model(ref_path, args) if ref_path else None
    explicit_other_reference = ref_path is not None and Path(ref_path).resolve() != Path(model_path).resolve()
    try:
        return PluginDPOTrainer(
            model,
            ref_model,
            args,
            train_dataset=_dataset(train_rows, options.data),
            eval_dataset=_dataset(eval_rows, options.eval_data) if eval_rows is not None else None,
            processing_class=tokenizer,
            peft_config=_lora_config(options) if options.lora else None,
            loss_terms=terms,
            check_reference=not explicit_other_reference,
            packed_forward=not options.trl_forward,
        )
    except (ValueError, NotImplementedError) as error:
        raise DpoPluginsError(f"TRL rejected this configuration: {error}") from None


def _dataset(rows, path):
    from datasets import Dataset

    try:
        return Dataset.from_list(rows)
    except Exception as error:  # Arrow cannot unify the rows' shapes
        raise DpoPluginsError(f"{path}: rows do not share one schema: {error}") from None


def run_sft(model_path: Path, rows: list[dict], options, args) -> Path:
    """SFT on prompt -> chosen; returns the SFT model directory (reused if already complete)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.data_utils import maybe_extract_prompt

    target = Path(args.output_dir) / SFT_MODEL
    pairs = [maybe_extract_prompt(dict(row)) for row in rows]
    sft_rows = [
        {"prompt": pair["prompt"], "completion": pair["chosen"], **({"tools": pair["tools"]} if "tools" in pair else {})}
        for pair in pairs
    ]
    made_from = sft_fingerprint(model_path, sft_rows, options, args)
    if _read_json(target / SFT_DONE) == made_from:
        logger.info("--sft-first: reusing the finished SFT model in %s (same model, data and settings)", target)
        return target
    if target.exists():
        logger.info("--sft-first: %s was made from other inputs or settings; training it again", target)
    sft_args = SFTConfig(
        output_dir=str(Path(args.output_dir) / "sft"),
        num_train_epochs=options.sft_epochs,
        learning_rate=options.sft_learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        max_length=args.max_length,
        bf16=args.bf16,
        fp16=args.fp16,
        use_cpu=args.use_cpu,
        seed=args.seed,
        logging_steps=args.logging_steps,
        report_to=args.report_to,
        disable_tqdm=args.disable_tqdm,
        save_strategy="no",
    )
    tokenizer = load_tokenizer(model_path)
    logger.info("--sft-first: supervised fine-tuning on %d chosen responses", len(sft_rows))
    trainer = SFTTrainer(
        model=_load_model(model_path, args),
        args=sft_args,
        train_dataset=Dataset.from_list(sft_rows),
        processing_class=tokenizer,
        peft_config=_lora_config(options) if options.lora else None,
    )
    trainer.train()
    trainer.save_state()
    model = trainer.model
    if options.lora:  # DPO trains a fresh adapter on top of the SFT weights
        model = model.merge_and_unload()
    if trainer.is_world_process_zero():
        with atomic_directory(target, replace=True) as building:
            model.save_pretrained(building)
            tokenizer.save_pretrained(building)
            (building / SFT_DONE).write_text(json.dumps(made_from) + "\n")
    trainer.accelerator.wait_for_everyone()
    return target


def sft_fingerprint(model_path: Path, sft_rows: list[dict], options, args) -> dict:
    """What an SFT model is made from: reused only when all of it is the same (the base model's weights,
    the rows, every setting the SFT stage reads)."""
    import hashlib

    weights = sorted(p for pattern in ("*.safetensors", "*.bin") for p in Path(model_path).glob(pattern))
    return {
        "base": str(Path(model_path).resolve()),
        "base_weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights],
        "rows": hashlib.sha256(json.dumps(sft_rows, sort_keys=True, default=str).encode()).hexdigest(),
        "settings": {
            "sft_epochs": options.sft_epochs, "sft_learning_rate": options.sft_learning_rate,
            "lora": options.lora and [options.lora_r, options.lora_alpha, options.lora_dropout,
                                      list(options.lora_target_modules)],
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "max_length": args.max_length,
            "bf16": args.bf16, "fp16": args.fp16, "seed": args.seed, "world_size": world_size(),
        },
    }


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
