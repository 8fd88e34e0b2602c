"""``dpo train``: its settings (our options, TRL's ``DPOConfig``, a YAML file) and the run.

Three sources, later ones winning: a YAML file (``--config``), then
command-line flags. Keys are our :class:`TrainOptions` fields, any
``DPOConfig`` / ``TrainingArguments`` field, or the hosted-fine-tuning names
of Azure OpenAI / OpenAI (:data:`HOSTED_NAMES`, YAML only). ``DPOConfig``
fields are parsed by transformers' ``HfArgumentParser`` (through
:mod:`dpo_plugins.adapters.trl_config`), so every field is accepted as
``--field-name value`` with TRL's own types and defaults.

``dpo anneal`` builds the same settings from its ``anneal:`` section
(:func:`settings_from`, with problems located in the anneal file). Only
:func:`settings_from` reaches TRL; the option table is plain dataclasses so
that building the ``dpo`` parser stays cheap. :func:`train` reads the data
(any registered format) and hands everything to
:func:`dpo_plugins.adapters.training.run_training`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from dpo_plugins.adapters.distributed import engine_problems, world_size
from dpo_plugins.atomic import check_output
from dpo_plugins.errors import ConfigError, DpoPluginsError, did_you_mean
from dpo_plugins.params import parse_key_values
from dpo_plugins.option_checks import config_value, training_range_problems
from dpo_plugins.workflows.config import load_yaml

logger = logging.getLogger("dpo_plugins.train")


@dataclass
class TrainOptions:
    """What ``dpo train`` adds to TRL's ``DPOConfig``."""

    model: str = field(default="smollm2", metadata={"help": "policy: a local checkpoint directory or 'smollm2'"})
    data: Optional[str] = field(default=None, metadata={"help": "training pairs, in any registered format (see `dpo plugins`)"})
    from_format: Optional[str] = field(
        default=None, metadata={"help": "format of --data/--eval-data (default: auto-detected)", "flag": "--from"}
    )
    eval_data: Optional[str] = field(default=None, metadata={"help": "held-out pairs, evaluated after training"})
    loss: Optional[list] = field(
        default=None,
        metadata={"help": "registered loss name(s), combined with --loss-weights (default sigmoid; "
                  "same as DPOConfig's --loss-type)", "nargs": "+"},
    )
    loss_param: dict = field(
        default_factory=dict,
        metadata={"help": "a loss's own parameter, KEY=VALUE or LOSS.KEY=VALUE (repeatable)", "repeat": True},
    )
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (the reference is the model "
                                                        "with the adapter disabled: no second copy)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "modules LoRA adapts", "nargs": "+"}
    )
    ref_model: Optional[str] = field(
        default=None, metadata={"help": "explicit reference model directory (default: the initial policy)"}
    )
    sft_first: bool = field(
        default=False, metadata={"help": "SFT on the chosen responses first, then DPO against the SFT model"}
    )
    sft_epochs: float = field(default=1.0, metadata={"help": "epochs of the --sft-first stage"})
    sft_learning_rate: float = field(default=2e-5, metadata={"help": "learning rate of the --sft-first stage"})
    allow_identical_pairs: bool = field(
        default=False, metadata={"help": "train on pairs whose chosen and rejected are identical (refused by "
                                         "default: such a pair teaches nothing, and is usually a data bug)"},
    )
    trl_forward: bool = field(
        default=False,
        metadata={"help": "use TRL's own two-row forward and its per-step reference instead of the packed, "
                          "prefix-shared forward and the cached reference (same numbers, slower)"},
    )


OPTION_FIELDS = {f.name: f for f in dataclasses.fields(TrainOptions)}

# Azure OpenAI / OpenAI hosted DPO hyperparameters -> what they set here.
HOSTED_NAMES = {
    "beta": "beta (same meaning: DPOConfig.beta)",
    "n_epochs": "num_train_epochs",
    "batch_size": "the global batch: per_device_train_batch_size x processes x gradient_accumulation_steps",
    "learning_rate_multiplier": "learning_rate = multiplier x learning_rate (DPOConfig's 1e-6 unless set)",
}


HOSTED_TARGETS = {
    "beta": "beta",
    "n_epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "learning_rate_multiplier": "learning_rate",
}


def add_option_arguments(parser, fields: Optional[Mapping[str, Any]] = None, exclude=()) -> None:
    """Our options (or another command's ``fields``) as argparse flags; defaults stay None so a YAML value can fill them."""
    for name, spec in (OPTION_FIELDS if fields is None else fields).items():
        if name in exclude:
            continue
        flag = spec.metadata.get("flag", "--" + name.replace("_", "-"))
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        help_text = spec.metadata["help"] + ("" if default is None else f" (default: {default})")
        if spec.type in ("bool", bool):
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=spec.metadata["help"])
        elif spec.metadata.get("repeat"):
            parser.add_argument(flag, dest=name, action="append", default=None, metavar="KEY=VALUE", help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, nargs=spec.metadata.get("nargs"),
                                type=_argparse_type(spec, default), help=help_text)


def _argparse_type(spec, default):
    if spec.metadata.get("nargs"):
        return str
    return type(default) if isinstance(default, (int, float)) else str


@dataclass
class Settings:
    options: TrainOptions
    dpo: Any  # trl.DPOConfig
    config_file: Optional[str] = None  # the --config file, an input like the data and the models


def build_settings(args, extra: list[str]) -> Settings:
    """Merge the ``--config`` YAML file, our flags and ``DPOConfig`` flags; every problem is listed at once."""
    if not args.config:
        return settings_from({}, str, args, extra)
    source = load_yaml(args.config)
    if source.data is not None and not isinstance(source.data, dict):
        raise ConfigError([source.problem((), "the config must be a mapping of option: value")])
    values = {str(key): value for key, value in (source.data or {}).items()}
    settings = settings_from(values, lambda key: source.location((key,)), args, extra)
    settings.config_file = args.config
    return settings


def settings_from(values: Mapping[str, Any], where: Callable[[str], str], args, extra: list[str]) -> Settings:
    """Settings from config ``values`` (``where(key)`` locates a key for messages), flags and ``extra``."""
    from dpo_plugins.adapters.trl_config import dpo_config_types, parse_dpo_config

    dpo_types = dpo_config_types()
    dpo_fields = set(dpo_types)
    problems: list[str] = []
    values = dict(values)
    for key, value in values.items():  # before anything reads them: `lora: "false"` is not false
        annotation = OPTION_FIELDS[key].type if key in OPTION_FIELDS else dpo_types.get(key)
        if key not in HOSTED_NAMES and annotation is not None:
            values[key], wrong = config_value(value, annotation)
            if wrong:
                problems.append(f"{where(key)}: {wrong}")
    options: dict[str, Any] = {}
    dpo_defaults: dict[str, Any] = {}
    hosted: dict[str, Any] = {}
    for key, value in values.items():
        if key in OPTION_FIELDS:
            options[key] = value
        elif key in HOSTED_NAMES:  # before DPOConfig's fields: beta is both
            hosted[key] = value
        elif key in dpo_fields:
            dpo_defaults[key] = value
        else:
            problems.append(f"{where(key)}: unknown option{did_you_mean(key, [*OPTION_FIELDS, *dpo_fields, *HOSTED_NAMES])}")
    if "loss_param" in options:
        if isinstance(options["loss_param"], dict):
            options["loss_param"] = dict(options["loss_param"])
        else:
            problems.append(f"{where('loss_param')}: expected a mapping of parameter: value")
            options.pop("loss_param")
    for name in OPTION_FIELDS:
        given = getattr(args, name, None)
        if given is None:
            continue
        if name == "loss_param":
            options[name] = {**options.get(name, {}),
                             **parse_key_values(given, "--loss-param", "KEY=VALUE (or LOSS.KEY=VALUE)")}
        else:
            options[name] = given

    if isinstance(options.get("loss"), str):
        options["loss"] = [options["loss"]]
    if options.get("loss"):
        if "loss_type" in dpo_defaults or any(a.startswith(("--loss-type", "--loss_type")) for a in extra):
            problems.append("give the losses once: --loss (or loss:) and --loss-type (loss_type:) are both set")
        dpo_defaults["loss_type"] = list(options["loss"])
    gpu = _has_gpu()
    dpo_defaults.setdefault("bf16", gpu)  # fp32 on CPU, bf16 on GPU unless told otherwise
    # On a CPU-only machine say so: under `accelerate launch` the processes then join a gloo group.
    dpo_defaults.setdefault("use_cpu", not gpu)
    # None = not set by the user: run_training decides once the losses are known
    # (reference log-probs computed once and cached on disk when the losses use a reference).
    dpo_defaults.setdefault("precompute_ref_log_probs", None)
    problems += _apply_hosted(hosted, dpo_defaults, where)
    problems += engine_problems(dpo_defaults, extra, gpu and not dpo_defaults["use_cpu"])
    if problems:
        raise DpoPluginsError("\n".join(problems))

    dpo_args = parse_dpo_config(dpo_defaults, extra)
    batch_problem = _check_global_batch(hosted.get("batch_size"), dpo_args)
    if batch_problem:
        raise DpoPluginsError(f"{where('batch_size')}: {batch_problem}")
    try:
        train_options = TrainOptions(**options)
    except TypeError as error:
        raise DpoPluginsError(f"invalid options: {error}") from None

    def located(key: str) -> str:
        """Where the value of ``key`` came from: its flag, else its line in the config file."""
        flag = "--" + key.replace("_", "-")
        given = getattr(args, key, None) is not None or any(
            argument.split("=")[0] in (flag, "--" + key) for argument in extra)
        return where(key) if key in values and not given else flag

    problems = training_range_problems(train_options, dpo_args, located)
    if problems:
        raise DpoPluginsError("\n".join(problems))
    return Settings(train_options, dpo_args)


def _check_global_batch(batch_size, dpo_args) -> Optional[str]:
    """The hosted batch_size is the global batch; flags may not contradict it."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        return None
    per_step = dpo_args.per_device_train_batch_size * world_size() * dpo_args.gradient_accumulation_steps
    if per_step != batch_size:
        return (
            f"{batch_size} pairs per step, but per_device_train_batch_size {dpo_args.per_device_train_batch_size} x "
            f"{world_size()} processes x gradient_accumulation_steps {dpo_args.gradient_accumulation_steps} "
            f"= {per_step}"
        )
    return None


def _apply_hosted(hosted: dict, dpo: dict, where) -> list[str]:
    """Translate the hosted-job hyperparameters; 'auto' keeps our default."""
    problems = []
    for key, value in hosted.items():
        if value == "auto":
            logger.info("%s: auto -> the default here", key)
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            problems.append(f"{where(key)}: expected a positive number or 'auto', got {value!r}")
            continue
        target = HOSTED_TARGETS[key]
        if target in dpo and target != "learning_rate":
            problems.append(f"{where(key)}: also set as {target}; give one of them")
            continue
        if key == "batch_size":
            processes = world_size() * int(dpo.get("gradient_accumulation_steps", 1))
            if int(value) != value or value % processes:
                problems.append(
                    f"{where(key)}: {value} pairs do not split over {processes} processes x accumulation steps"
                )
                continue
            dpo[target] = int(value) // processes
        elif key == "learning_rate_multiplier":
            dpo[target] = value * dpo.get("learning_rate", 1e-6)
        elif key == "n_epochs":
            dpo[target] = float(value)
        else:
            dpo[target] = value
    return problems


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def train(settings: Settings) -> Path:
    """``dpo train``: train as ``settings`` say, reading the data in any registered format."""
    from dpo_plugins.adapters.training import run_training
    from dpo_plugins.workflows.convert import read_trl_rows

    from dpo_plugins.adapters.models import model_input_paths

    options = settings.options
    inputs = [settings.config_file, options.data, options.eval_data,
              *model_input_paths(options.model), *model_input_paths(options.ref_model)]
    # Checked before any work; run_training marks it when training starts (TRL writes checkpoints into it).
    check_output(settings.dpo.output_dir, folder=True, inputs=inputs)
    identical = None if options.allow_identical_pairs else "--allow-identical-pairs"
    return run_training(settings, lambda path, fmt: read_trl_rows(path, fmt, identical_pairs=identical))
