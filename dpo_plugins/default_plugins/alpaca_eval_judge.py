"""The ``alpaca-eval`` judge: an AlpacaEval annotator config, run by AlpacaEval's own ``PairwiseAnnotator``.

An AlpacaEval annotator is a config (``evaluators_configs/NAME/configs.yaml``): a prompt
template, completion settings and a parser (``weighted_alpaca_eval_gpt4_turbo`` asks for one
token and reads the log-probabilities of ``m`` / ``M``). This judge builds AlpacaEval's
``PairwiseAnnotator`` from the config, by name or path, and replaces only the function that
fetches completions (:mod:`.alpaca_eval_decoders`): an OpenAI-compatible endpoint (``base_url``:
OpenAI, Azure OpenAI, vLLM, llama.cpp server, Ollama) or a local causal LM (``local_model``).
So the prompts, the parsing, the handling of identical outputs (1.5) and of unparsable replies
(a null preference) and the annotation records are AlpacaEval's, not a re-implementation.

Two choices differ from ``alpaca_eval evaluate``'s defaults, both because the eval harness
judges every pair in both orders itself: the outputs are shown in the order given
(``randomize_output_order=False``; AlpacaEval's random switch would hide the judge's position
bias from the harness's statistics), and nothing is cached here (the harness caches judge
answers; AlpacaEval's ``caching_path`` is off).

Per prompt the judge returns ``P(a better) = 2 - preference``. An unparsable reply has no
preference: it is reported in one warning line and returned as ``None`` (the judge contract's
"could not judge": counted in ``# parsed`` / ``n_null``, in no rate), while ``annotations`` records it
as null exactly as AlpacaEval does.

AlpacaEval is an optional dependency (``pip install 'dpo-plugins[alpaca-eval]'``): it pins
``setuptools<81`` and pulls the ``openai`` SDK, pandas and tiktoken, which nothing else needs.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import math
import warnings
from pathlib import Path

from ..atomic import write_text
from ..errors import DpoPluginsError
from ..evals.judging import prompt_text
from ..hookspecs import hookimpl
from ..specs import Judge

NAME = "alpaca-eval"
WHO = f"judge {NAME!r}"
DEFAULTS = {
    "annotator": "weighted_alpaca_eval_gpt4_turbo",
    "base_url": None,
    "local_model": None,
    "model": None,
    "azure_deployment": None,
    "api_version": None,
    "api_key_env": "OPENAI_API_KEY",
    "api_key_header": None,
    "timeout": 60.0,
    "max_retries": 5,
    "retry_wait": 2.0,
    "concurrency": 5,
    "price_per_token": None,
    "annotations": None,
    "randomize_output_order": False,
    "seed": 0,
}
logger = logging.getLogger("dpo_plugins.judges")
_written: dict[str, list] = {}  # annotations files this process created, with their records


def alpaca_eval_judge(prompts, outputs_a, outputs_b, **params):
    """``P(a better)`` per prompt from the AlpacaEval annotator ``annotator`` (see the module docstring)."""
    settings = {**DEFAULTS, **params}
    records = annotate(prompts, outputs_a, outputs_b, **settings)
    missing = sum(r["preference"] is None for r in records)
    if missing:
        logger.warning("%s: %d of %d replies could not be parsed by %s's parser (null preference in AlpacaEval's "
                       "records); each is counted as not judged", WHO, missing, len(records), settings["annotator"])
    return [None if r["preference"] is None else 2.0 - float(r["preference"]) for r in records]


def annotate(prompts, outputs_a, outputs_b, annotator, base_url=None, local_model=None, model=None,
             azure_deployment=None, api_version=None, api_key_env="OPENAI_API_KEY", api_key_header=None, timeout=60.0,
             max_retries=5, retry_wait=2.0, concurrency=5, price_per_token=None, annotations=None,
             randomize_output_order=False, seed=0) -> list[dict]:
    """AlpacaEval's annotation records for (instruction, output_1=a, output_2=b), in input order."""
    problems = _problems(base_url, local_model, seed, concurrency, price_per_token, randomize_output_order)
    if local_model:
        http_only = {"model": model, "azure_deployment": azure_deployment, "api_version": api_version,
                     "api_key_header": api_key_header, "price_per_token": price_per_token}
        problems += [f"{WHO}: {name} is for an endpoint (base_url); a local_model runs without it"
                     for name, value in http_only.items() if value is not None]
    target = None
    if base_url:
        from .chat_endpoint import endpoint

        try:
            target = endpoint(WHO, base_url, api_key_env, api_key_header, azure_deployment, api_version, timeout,
                              max_retries, retry_wait)
        except DpoPluginsError as error:
            problems += str(error).splitlines()
    if annotations and str(Path(annotations).resolve()) not in _written and Path(annotations).exists():
        problems.append(f"{WHO}: annotations file {annotations} already exists; give a new path "
                        "(the judge never overwrites a file it did not write)")
    if problems:
        raise DpoPluginsError("\n".join(problems))
    with _alpaca_eval_logs_off():
        pairwise, configs = _annotator(str(annotator), seed, randomize_output_order)
        _use_decoder(pairwise, configs, target, local_model, model, price_per_token, concurrency)
        rows = [{"instruction": prompt_text(p), "output_1": a, "output_2": b}
                for p, a, b in zip(prompts, outputs_a, outputs_b)]
        records = [_plain(r) for r in pairwise.annotate_pairs(rows)] if rows else []
    if annotations:
        _append_annotations(Path(annotations), records)
    return records


def _problems(base_url, local_model, seed, concurrency, price_per_token, randomize_output_order) -> list[str]:
    """Every bad setting, found before AlpacaEval or a model loads."""
    from .chat_endpoint import is_number

    problems = [f"{WHO}: {name} must be {kind}, not {value!r}" for name, value, kind, ok in (
        ("seed", seed, "a whole number", is_number(seed, int)),
        ("concurrency", concurrency, "a whole number at least 1", is_number(concurrency, int) and concurrency >= 1),
        ("price_per_token", price_per_token, "a price at least 0 (USD per token)",
         price_per_token is None or (is_number(price_per_token) and price_per_token >= 0)),
        ("randomize_output_order", randomize_output_order, "true or false", isinstance(randomize_output_order, bool)),
    ) if not ok]
    if bool(base_url) == bool(local_model):
        problems.insert(0, f"{WHO}: give exactly one of base_url (an OpenAI-compatible endpoint) and local_model "
                           "(a causal LM name or path)")
    return problems


def config_path(annotator: str) -> Path:
    """The ``configs.yaml`` of an AlpacaEval annotator: a name in the installed AlpacaEval, a folder or a file."""
    constants = _alpaca_eval("constants")
    builtin = Path(constants.EVALUATORS_CONFIG_DIR)
    for candidate in (Path(annotator).expanduser(), builtin / annotator):
        if candidate.is_dir() and (candidate / "configs.yaml").is_file():
            return (candidate / "configs.yaml").resolve()
        if candidate.is_file() and candidate.suffix in (".yaml", ".yml"):
            return candidate.resolve()
    names = sorted(p.name for p in builtin.iterdir() if (p / "configs.yaml").is_file())
    close = difflib.get_close_matches(annotator, names, n=3)
    raise DpoPluginsError(f"{WHO}: annotator {annotator!r} is neither an AlpacaEval config "
                          f"({'did you mean ' + ', '.join(close) + '? ' if close else ''}the {len(names)} shipped with "
                          f"alpaca_eval are in {builtin}) nor a folder with configs.yaml or a .yaml file")


def _annotator(annotator: str, seed: int, randomize: bool):
    """AlpacaEval's ``PairwiseAnnotator`` for the config, and the config's raw entries by annotator name."""
    path = config_path(annotator)
    utils = _alpaca_eval("utils")
    try:
        configs = utils.load_configs(path)
    except Exception as error:  # a YAML or file error, in AlpacaEval's reader
        raise DpoPluginsError(f"{WHO}: cannot read {path}: {error}") from None
    base_dir = path.parents[1]  # where AlpacaEval resolves prompt_template paths
    problems = []
    for name, config in configs.items():
        if not isinstance(config, dict) or "prompt_template" not in config:
            problems.append(f"{path}: {name}: no prompt_template")
            continue
        if not (base_dir / str(config["prompt_template"])).is_file():
            problems.append(f"{path}: {name}.prompt_template: {config['prompt_template']} not found under {base_dir}")
        if "is_randomize_output_order" in config:
            problems.append(f"{path}: {name}.is_randomize_output_order: set it with --judge-param "
                            "randomize_output_order=... instead")
    if problems:
        raise DpoPluginsError("\n".join(f"{WHO}: {p}" for p in problems))
    pairwise_module = _alpaca_eval("annotators.pairwise_evaluator")
    try:
        pairwise = pairwise_module.PairwiseAnnotator(annotators_config=path, caching_path=None, seed=seed,
                                                     is_randomize_output_order=randomize)
    except Exception as error:  # AlpacaEval rejecting the config's fields
        raise DpoPluginsError(f"{WHO}: AlpacaEval cannot build {path}: {type(error).__name__}: {error}") from None
    return pairwise, configs


def _use_decoder(pairwise, configs, target, local_model, model, price_per_token, concurrency) -> None:
    """Point every single annotator of the pool at the endpoint or the local model (nothing else changes)."""
    from . import alpaca_eval_decoders as decoders

    for name, single in pairwise.annotators.items():
        kwargs = dict(single.completions_kwargs)
        if model:
            kwargs["model_name"] = str(model)
        if price_per_token is not None:
            kwargs["price_per_token"] = float(price_per_token)
        if target is not None:
            used = configs[name].get("fn_completions", "openai_completions")
            if used != "openai_completions":
                raise DpoPluginsError(f"{WHO}: {name} completes with {used}; over HTTP this judge speaks "
                                      "the chat-completions protocol, so it runs configs made for openai_completions")
            biased = sorted(set(kwargs) & set(decoders.UNSUPPORTED))
            if biased:
                raise DpoPluginsError(f"{WHO}: {name}'s completions_kwargs use {', '.join(biased)} (logit biases by "
                                      "OpenAI tokenizer ids), which this judge does not send; use a config without them")
            single.fn_completions = functools.partial(decoders.endpoint_completions, target=target,
                                                      concurrency=int(concurrency))
        else:
            from .judges import causal_lm

            judge_model, tokenizer = causal_lm(str(local_model))
            parser_kwargs = configs[name].get("completion_parser_kwargs") or {}
            tokens = [parser_kwargs["numerator_token"], *parser_kwargs.get("denominator_tokens", ())] \
                if "numerator_token" in parser_kwargs else []
            kwargs["model_name"] = str(local_model)
            single.fn_completions = functools.partial(decoders.local_completions, model=judge_model,
                                                      tokenizer=tokenizer, parser_tokens=tokens)
        single.completions_kwargs = kwargs


def _append_annotations(path: Path, records: list[dict]) -> None:
    """AlpacaEval's records, added to the file this process created (both orders land in one file)."""
    key = str(path.resolve())
    _written.setdefault(key, []).extend(records)
    write_text(path, json.dumps(_written[key], indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def _plain(value):
    """A record as JSON values: NaN and numpy scalars become null and Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _alpaca_eval(module: str):
    """``alpaca_eval.<module>``, imported quietly (it warns about pkg_resources and sets the root log level)."""
    import importlib

    root = logging.getLogger()
    level = root.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(f"alpaca_eval.{module}")
    except ImportError as error:
        raise DpoPluginsError(f"{WHO} needs AlpacaEval: pip install 'dpo-plugins[alpaca-eval]' ({error})") from None
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _alpaca_eval_logs_off():
    """Keep AlpacaEval's root-logger chatter, and the tracebacks it logs for unparsable replies, off the console.

    AlpacaEval logs through the root logger itself, so a filter there drops its records and no one else's.
    """

    def not_alpaca_eval(record: logging.LogRecord) -> bool:
        return "alpaca_eval" not in Path(record.pathname).parts

    root = logging.getLogger()
    root.addFilter(not_alpaca_eval)
    try:
        yield
    finally:
        root.removeFilter(not_alpaca_eval)


@hookimpl
def register_judges():
    yield Judge(name=NAME, fn=alpaca_eval_judge, params=DEFAULTS,
                description="an AlpacaEval annotator config (prompt, settings, parser) over an OpenAI-compatible "
                            "endpoint or a local causal LM")
