"""TRL's ``DPOConfig`` as ``dpo train`` reads it: its field names, its flags, its help.

Every ``DPOConfig`` / ``TrainingArguments`` field is accepted as
``--field-name VALUE`` (parsed by transformers' ``HfArgumentParser``) or as a
key of the config file; this module is where the workflow meets those classes.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping, Sequence

from dpo_plugins.errors import DpoPluginsError


def dpo_config_types() -> dict:
    """The fields ``DPOConfig(...)`` accepts, each with its annotation (what a config value is checked against)."""
    from trl import DPOConfig

    return {f.name: f.type for f in dataclasses.fields(DPOConfig) if f.init}


def parse_dpo_config(defaults: Mapping[str, Any], flags: Sequence[str]):
    """A ``DPOConfig`` from ``defaults`` (the config file's values and ours) overridden by ``flags``."""
    from transformers import HfArgumentParser
    from trl import DPOConfig

    parser = HfArgumentParser(DPOConfig)
    parser.set_defaults(**defaults)
    parser.exit_on_error = False  # a bad value raises, naming its flag, instead of printing usage and exiting
    try:
        config, unknown = parser.parse_args_into_dataclasses(args=list(flags), return_remaining_strings=True)
    except argparse.ArgumentError as error:
        raise DpoPluginsError(f"invalid trainer argument: {error}") from None
    except (ValueError, TypeError) as error:
        raise DpoPluginsError(f"invalid trainer configuration: {error}") from None
    except SystemExit:
        raise DpoPluginsError(f"invalid trainer arguments: {' '.join(flags)}") from None
    if unknown:
        raise DpoPluginsError(
            f"unknown option(s) {' '.join(unknown)}: see `dpo train --help`; every DPOConfig / "
            "TrainingArguments field is accepted as --field-name VALUE"
        )
    return config


def print_trainer_help(prog: str) -> None:
    """Every ``DPOConfig`` / ``TrainingArguments`` flag, as ``HfArgumentParser`` documents it."""
    from transformers import HfArgumentParser
    from trl import DPOConfig

    HfArgumentParser(DPOConfig, prog=prog).print_help()
