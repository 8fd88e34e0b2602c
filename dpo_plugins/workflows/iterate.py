"""``dpo iterate``: online (iterative) DPO in rounds: sample, judge, pair, train, evaluate, repeat.

Each round samples K completions per prompt from the current policy
(:mod:`dpo_plugins.evals.sampling`), scores them (a judge plugin, anchored
or round-robin, or DICE: :mod:`dpo_plugins.evals.sample_scores`), turns the
scores into pairs with a ``register_pair_builders`` plugin, trains one
``dpo train`` run on those pairs (the same :func:`~.train.settings_from` and
:func:`~.train.train`, so a round's training *is* ``dpo train``), evaluates
the result on held-out pairs (the eval pipeline's :func:`run_eval`) and
goes on from the round's policy.

Every phase leaves data (``round-N/prompts.jsonl``, ``samples.jsonl``,
``scores.jsonl``, ``pairs.jsonl`` in HF pairs, ``pairs.azure.jsonl`` on
request) and then a ``round-N/<phase>.json`` record with its time; a run
killed anywhere resumes at the first phase without its record. Generation
and judging also keep finished batches / prompts (``samples-cache/``,
``judge-cache/``), so a killed phase does not redo them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from dpo_plugins.atomic import check_output, claim_folder, mark, write_text
from dpo_plugins.errors import ConfigError, DpoPluginsError, did_you_mean
from dpo_plugins.params import parse_key_values, typed_like
from dpo_plugins.workflows.config import load_yaml
from dpo_plugins.workflows.iterate_report import write_report
from dpo_plugins.workflows.train import OPTION_FIELDS as TRAIN_FIELDS

logger = logging.getLogger("dpo_plugins.iterate")

DEMO_DATA = Path(__file__).parent.parent / "data" / "demo" / "hh-harmless-azure.jsonl"
PHASES = ("generate", "judge", "pairs", "train", "eval")
DICE = "dice"
REFERENCES = ("initial", "previous")
# dpo train options a round sets itself (the policy, the pairs, the reference, where it writes).
SET_PER_ROUND = {"model", "data", "from_format", "eval_data", "ref_model", "output_dir", "resume_from_checkpoint",
                 "eval_strategy"}
# dpo train options a round cannot honour: its policy must be a full model the next round samples from.
REFUSED = {"lora": "each round's policy must be a full model the next round samples from",
           "sft_first": "iterate from an SFT model instead (--model)"}
TRAIN_FLAG_EXCLUDE = SET_PER_ROUND | {"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "sft_epochs",
                                      "sft_learning_rate"}


@dataclass
class IterateOptions:
    """``dpo iterate``'s own options (the ``train:`` section and trainer flags hold ``dpo train``'s)."""

    model: str = field(default="smollm2", metadata={"help": "initial policy: a local checkpoint or 'smollm2'"})
    prompts: str = field(default=str(DEMO_DATA), metadata={
        "help": "prompts: JSONL/JSON/Parquet rows with a prompt, or preference data in any registered format "
                "(its distinct prompts)"})
    max_prompts: Optional[int] = field(default=64, metadata={"help": "use the first N distinct prompts (0 = all)"})
    eval_data: Optional[str] = field(default=None, metadata={"help": "held-out preference pairs: reward accuracy "
                                                                     "after every round"})
    from_format: Optional[str] = field(default=None, metadata={"help": "format of --eval-data (default: detected)",
                                                               "flag": "--from"})
    output: Optional[str] = field(default=None, metadata={"help": "the run folder (resumed when it holds this run)"})
    rounds: int = field(default=2, metadata={"help": "rounds of sample -> judge -> pair -> train -> evaluate"})
    samples_per_prompt: int = field(default=4, metadata={"help": "K: completions sampled per prompt (>= 2)"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per sample at most"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling top-p"})
    seed: int = field(default=0, metadata={"help": "sampling seed (with the generation batch size: same samples)"})
    generation_batch_size: int = field(default=8, metadata={"help": "prompts per generate call"})
    judge: str = field(default="llm-pairwise", metadata={"help": "a judge plugin (see `dpo plugins`), or 'dice': "
                                                                 "the policy's implicit reward vs its reference"})
    judge_param: dict = field(default_factory=dict, metadata={"help": "judge parameter KEY=VALUE (repeatable)",
                                                              "repeat": True})
    judge_mode: str = field(default="round-robin", metadata={"help": "a judge plugin's comparisons: round-robin "
                                                                     "(every two samples) or anchor (each vs sample 0)"})
    dice_ref: Optional[str] = field(default=None, metadata={"help": "with --judge dice: the reference the initial "
                                                                    "policy was DPO-trained against"})
    pair_builder: str = field(default="best-vs-worst", metadata={"help": "pair rule (see `dpo plugins`)"})
    pair_param: dict = field(default_factory=dict, metadata={"help": "pair builder parameter KEY=VALUE, e.g. "
                                                                     "margin=0.1 (repeatable)", "repeat": True})
    reference: str = field(default="initial", metadata={"help": "the reference of round N's training: initial "
                                                                "(the initial model) or previous (round N-1's policy)"})
    azure: bool = field(default=False, metadata={"help": "also write each round's pairs as Azure OpenAI JSONL"})
    winrate_prompts: int = field(default=0, metadata={"help": "with a judge plugin and --eval-data: judge this many "
                                                              "held-out prompts, round policy vs the initial model"})
    eval_ref: Optional[str] = field(default=None, metadata={
        "help": "reference of the held-out reward accuracy, the same in every round so rounds compare "
                "(default: each round's training reference)"})
    eval_batch_size: int = field(default=8, metadata={"help": "pairs per forward when scoring"})


OPTION_FIELDS = {f.name: f for f in dataclasses.fields(IterateOptions)}


@dataclass
class IterateSettings:
    options: IterateOptions
    train_values: dict  # the train: section, dpo train's keys
    train_flags: dict  # dpo train's own flags given on the command line (loss, loss_param, trl_forward)
    train_extra: list  # DPOConfig flags
    where: Callable[[str], str]  # locates a train: key for messages
    prompts: list
    eval_rows: Optional[list]
    beta: float
    config: Optional[str] = None
    max_length: Optional[int] = None  # the training's, so the held-out pairs are truncated as training truncates

    def fingerprint(self) -> dict:
        """What must not change when a run resumes (everything but the number of rounds and the output)."""
        options = {k: v for k, v in dataclasses.asdict(self.options).items() if k not in ("rounds", "output")}
        return json.loads(json.dumps({"options": options, "train": self.train_values, "train_flags": self.train_flags,
                                      "trainer_flags": self.train_extra}, default=str))


# -- settings: YAML + flags, every option checked before any model loads ------------------------------


def build_settings(args, extra: list[str]) -> IterateSettings:
    values, train_values, where, problems = {}, {}, (lambda key: f"train.{key}"), []
    if args.config:
        source = load_yaml(args.config)
        if source.data is not None and not isinstance(source.data, dict):
            raise ConfigError([source.problem((), "the config must be a mapping of option: value")])
        for key, value in (source.data or {}).items():
            key = str(key)
            if key == "train":
                if not isinstance(value, dict):
                    problems.append(source.problem(("train",), "expected a mapping of dpo train options"))
                else:
                    train_values = {str(k): v for k, v in value.items()}
            elif key in OPTION_FIELDS:
                values[key] = value
            else:
                problems.append(source.problem((key,), "unknown option" + did_you_mean(key, [*OPTION_FIELDS, "train"])))
        where = lambda key: source.location(("train", key))  # noqa: E731
    for name in OPTION_FIELDS:
        given = getattr(args, name, None)
        if given is None:
            continue
        repeated = OPTION_FIELDS[name].metadata.get("repeat")
        values[name] = parse_key_values(given, "--" + name.replace("_", "-")) if repeated else given
    for name in ("judge_param", "pair_param"):
        if name in values and not isinstance(values[name], dict):
            problems.append(f"{name}: expected a mapping of parameter: value")
            values.pop(name)
    try:
        options = IterateOptions(**values)
    except TypeError as error:
        raise DpoPluginsError(f"invalid options: {error}") from None
    train_flags = {name: getattr(args, name) for name in TRAIN_FIELDS
                   if name not in TRAIN_FLAG_EXCLUDE and getattr(args, name, None) is not None}
    problems += _check_options(options)
    problems += _check_train_keys(train_values, train_flags, extra, where)
    if problems:
        raise DpoPluginsError("\n".join(problems))
    prompts = read_prompts(options.prompts, options.max_prompts)
    eval_rows = None
    if options.eval_data:
        from dpo_plugins.workflows.convert import read_trl_rows

        eval_rows = read_trl_rows(options.eval_data, options.from_format)
    settings = IterateSettings(options, train_values, train_flags, list(extra), where, prompts, eval_rows, beta=0.0,
                               config=args.config)
    probe = round_train_settings(settings, Path(options.output) / "round-1" / "pairs.jsonl",
                                 Path(options.output) / "round-1" / "model", options.model, None)
    from dpo_plugins.adapters.loss_selection import select_losses

    select_losses(probe.dpo, probe.options.loss_param, False)  # unknown losses and parameters, before any model
    settings.beta = float(probe.dpo.beta)
    settings.max_length = probe.dpo.max_length
    return settings


def _check_options(options: IterateOptions) -> list[str]:
    from dpo_plugins.evals.sample_scores import JUDGE_MODES
    from dpo_plugins.plugins import registrations

    problems = []
    if not options.output:
        problems.append("output: required (--output DIR): the run folder")
    for name, low in (("rounds", 1), ("samples_per_prompt", 2), ("max_new_tokens", 1), ("generation_batch_size", 1),
                      ("eval_batch_size", 1), ("max_prompts", 0), ("winrate_prompts", 0)):
        value = getattr(options, name)
        if value is None and name == "max_prompts":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            why = " (a pair needs two samples of the same prompt)" if name == "samples_per_prompt" else ""
            problems.append(f"{name}: expected an integer >= {low}, got {value!r}{why}")
    if not _number(options.temperature) or options.temperature <= 0:
        problems.append(f"temperature: expected a number > 0, got {options.temperature!r}")
    if not _number(options.top_p) or not 0 < options.top_p <= 1:
        problems.append(f"top_p: expected a number in (0, 1], got {options.top_p!r}")
    if options.reference not in REFERENCES:
        problems.append(f"reference: expected one of {', '.join(REFERENCES)}, got {options.reference!r}")
    if options.judge == DICE:
        if not options.dice_ref:
            problems.append("judge dice: give --dice-ref, the model the initial policy was DPO-trained against "
                            "(its implicit reward is the log-ratio to it)")
        if options.judge_param:
            problems.append("judge dice takes no --judge-param (beta is the training beta)")
        if options.winrate_prompts:
            problems.append("winrate_prompts: needs a judge plugin; dice ranks one policy's own samples only")
    else:
        judges = registrations("judge")
        if options.judge not in judges:
            problems.append(f"judge: unknown judge {options.judge!r}; available: {', '.join(sorted([*judges, DICE]))}")
        else:
            options.judge_param = _typed(options.judge_param, judges[options.judge].spec.params, "judge_param",
                                         problems)
        if options.judge_mode not in JUDGE_MODES:
            problems.append(f"judge_mode: expected one of {', '.join(JUDGE_MODES)}, got {options.judge_mode!r}")
        if options.dice_ref:
            problems.append("dice_ref: only with --judge dice")
    builders = registrations("pair_builder")
    if options.pair_builder not in builders:
        problems.append(f"pair_builder: unknown pair builder {options.pair_builder!r}; "
                        f"available: {', '.join(sorted(builders))}")
    else:
        declared = builders[options.pair_builder].spec.params
        for key in options.pair_param:
            if key not in declared:
                problems.append(f"pair_param {key}: pair builder {options.pair_builder!r} has no such parameter "
                                f"(it has: {', '.join(declared) or 'none'})")
        options.pair_param = _typed(options.pair_param, declared, "pair_param", problems)
    if options.eval_ref and not options.eval_data:
        problems.append("eval_ref: needs --eval-data (the held-out pairs it scores)")
    if options.winrate_prompts and not options.eval_data:
        problems.append("winrate_prompts: needs --eval-data (its prompts are the held-out ones)")
    return problems


def _typed(given: Mapping[str, Any], declared: Mapping[str, Any], name: str, problems: list) -> dict:
    """Command-line strings typed like the plugin's declared defaults (YAML values are typed already)."""
    typed = {}
    for key, value in given.items():
        try:
            typed[key] = typed_like(declared.get(key), value)
        except ValueError as error:
            problems.append(f"{name} {key}: {error}")
    return typed


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_train_keys(train_values: Mapping, train_flags: Mapping, extra: list[str], where) -> list[str]:
    problems = []
    for key in train_values:
        if key in SET_PER_ROUND:
            problems.append(f"{where(key)}: set by dpo iterate in every round; remove it")
        elif key in REFUSED:
            problems.append(f"{where(key)}: not supported by dpo iterate: {REFUSED[key]}")
    for key in ("lora", "sft_first"):
        if train_flags.get(key):
            problems.append(f"--{key.replace('_', '-')}: not supported by dpo iterate: {REFUSED[key]}")
    for argument in extra:
        name = argument.lstrip("-").split("=")[0].replace("-", "_")
        if argument.startswith("--") and name in SET_PER_ROUND:
            problems.append(f"{argument}: set by dpo iterate in every round; remove it")
    return problems


def read_prompts(path, max_prompts: Optional[int]) -> list:
    """The distinct prompts of ``path`` (prompt rows, or preference data of any format), first ``max_prompts``."""
    from dpo_plugins.evals.judging import prompt_key, unique_prompts
    from dpo_plugins.formats.files import read_rows
    from dpo_plugins.workflows.convert import read_trl_rows
    from dpo_plugins.records import Problem

    items = list(read_rows(path))
    rows = [row for _, row in items if isinstance(row, dict)]
    if all(not ({"chosen", "rejected", "messages", "preferred_output"} & set(row)) for row in rows):
        problems = [f"{path}:{line}: {item.message}" for line, item in items if isinstance(item, Problem)]
        problems += [f"{path}:{line}: $.prompt: missing, or not a string or a list of messages"
                     for line, row in items if isinstance(row, dict) and not _is_prompt(row.get("prompt"))]
        if problems:
            raise DpoPluginsError("\n".join(problems))
        seen, prompts = set(), []
        for row in rows:
            if prompt_key(row["prompt"]) not in seen:
                seen.add(prompt_key(row["prompt"]))
                prompts.append(row["prompt"])
    else:
        prompts = unique_prompts(read_trl_rows(path))
    prompts = prompts[:max_prompts] if max_prompts else prompts
    if not prompts:
        raise DpoPluginsError(f"{path}: no prompts (nothing to sample from)")
    return prompts


def _is_prompt(value) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def round_train_settings(settings: IterateSettings, pairs: Path, output_dir: Path, policy, reference):
    """The ``dpo train`` settings of one round: the user's train: section and flags, plus this round's
    policy, pairs, reference and output folder."""
    from dpo_plugins.workflows.train import settings_from

    values = {**settings.train_values, "model": str(policy), "data": str(pairs), "output_dir": str(output_dir)}
    if reference is not None:
        values["ref_model"] = str(reference)
    flags = argparse.Namespace(**{name: settings.train_flags.get(name) for name in TRAIN_FIELDS})
    return settings_from(values, settings.where, flags, list(settings.train_extra))


# -- the run -----------------------------------------------------------------------------------------


def iterate(settings: IterateSettings) -> Path:
    """Run (or resume) every round into ``settings.options.output``; returns the run folder."""
    from dpo_plugins.adapters.models import resolve_model

    options = settings.options
    out = Path(options.output)
    inputs = [p for p in (options.prompts, options.eval_data, settings.config, options.model, options.dice_ref,
                          options.eval_ref)
              if p and Path(p).exists()]
    check_output(out, folder=True, inputs=inputs)
    record = out / "run.json"
    if record.is_file():
        stored = json.loads(record.read_text(encoding="utf-8"))
        if stored.get("settings") != settings.fingerprint():
            raise DpoPluginsError(f"{out}: holds a dpo iterate run with other settings (see {record}); give the same "
                                  "settings to resume it, or another --output")
        logger.info("resuming the run in %s", out)
    else:
        claim_folder(out, "dpo iterate", inputs=inputs)
        write_text(record, json.dumps({"settings": settings.fingerprint()}, indent=2) + "\n")
    initial = resolve_model(options.model)
    policy, summaries = initial, []
    for number in range(1, options.rounds + 1):
        summary = Round(settings, out, number, policy, initial, summaries).run()
        summaries.append(summary)
        policy = Path(summary["model"])
        write_report(out, summaries, settings)
    return out


class Round:
    """One round's phases; each is skipped when its record exists (a resumed run)."""

    def __init__(self, settings: IterateSettings, out: Path, number: int, policy: Path, initial: Path, earlier: list):
        self.settings, self.options, self.number = settings, settings.options, number
        self.dir = out / f"round-{number}"
        self.out, self.policy, self.initial, self.earlier = out, Path(policy), Path(initial), earlier
        self._models: dict = {}

    def run(self) -> dict:
        done = self.dir / "round.json"
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
        self.dir.mkdir(exist_ok=True)
        mark(self.dir, "dpo iterate")
        records = {}
        for phase in PHASES:
            path = self.dir / f"{phase}.json"
            if path.is_file():
                records[phase] = json.loads(path.read_text(encoding="utf-8"))
                continue
            started = time.perf_counter()
            try:
                record = getattr(self, f"_{phase}")(records)
            except (DpoPluginsError, OSError) as error:
                raise DpoPluginsError(self._stopped(phase, error)) from error
            record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - started
            write_text(path, json.dumps(record, indent=2, allow_nan=False) + "\n")
            records[phase] = record
            logger.info("round %d: %s done in %.1f s", self.number, phase, record["seconds"])
        self._models.clear()
        summary = {"round": self.number, "model": records["train"]["model"],
                   "reference": records["train"]["reference"], **{p: records[p] for p in PHASES}}
        write_text(done, json.dumps(summary, indent=2, allow_nan=False) + "\n")
        return summary

    def _stopped(self, phase: str, error: BaseException) -> str:
        """One line: where the run stopped, why, and that what finished is kept."""
        what = f"{error.filename}: {error.strerror or error}" if isinstance(error, OSError) and error.filename \
            else (error.strerror if isinstance(error, OSError) and error.strerror else str(error))
        kept = f"rounds 1-{self.number - 1} and " if self.number > 1 else ""
        return (f"round {self.number}, {phase}: {' '.join(what.split())} ({kept}round {self.number}'s finished "
                f"phases are kept in {self.out}; the same command resumes)")

    # -- models, loaded once per round

    def _model(self, path):
        from dpo_plugins.adapters.models import load_model_and_tokenizer

        key = str(Path(path).resolve())
        if key not in self._models:
            model, tokenizer = load_model_and_tokenizer(path)
            self._models[key] = (model.eval(), tokenizer)
        return self._models[key]

    # -- phases: each returns its record (written as round-N/<phase>.json)

    def _generate(self, records) -> dict:
        from dpo_plugins.evals.sampling import Sample, sample_batch
        from dpo_plugins.evals.judging import GenerationSettings

        options, prompts = self.options, self.settings.prompts
        generation = GenerationSettings(max_new_tokens=options.max_new_tokens, do_sample=True,
                                        temperature=options.temperature, top_p=options.top_p, seed=options.seed)
        cache = self.dir / "samples-cache"
        samples, seconds, size = [], 0.0, options.generation_batch_size
        for start in range(0, len(prompts), size):
            chunk = cache / f"{start:06d}.json"
            if chunk.is_file():
                stored = json.loads(chunk.read_text(encoding="utf-8"))
            else:
                model, tokenizer = self._model(self.policy)
                began = time.perf_counter()
                batch = sample_batch(model, tokenizer, prompts[start:start + size], options.samples_per_prompt,
                                     generation, seed=self._seed(start))
                stored = {"seconds": time.perf_counter() - began,
                          "samples": [[dataclasses.asdict(s) for s in group] for group in batch]}
                write_text(chunk, json.dumps(stored) + "\n")
            seconds += stored["seconds"]
            samples += [[Sample(**s) for s in group] for group in stored["samples"]]
        _write_rows(self.dir / "prompts.jsonl", ({"prompt_index": p, "prompt": prompt} for p, prompt in enumerate(prompts)))
        _write_rows(self.dir / "samples.jsonl", (
            {"prompt_index": p, "sample_index": k, "prompt": prompts[p], "completion": s.text, "tokens": s.tokens,
             "policy": str(self.policy), "generation": {**generation.as_dict(), "seed": self._seed(p - p % size)}}
            for p, group in enumerate(samples) for k, s in enumerate(group)))
        tokens = sum(s.tokens for group in samples for s in group)
        return {"policy": str(self.policy), "prompts": len(prompts), "samples": sum(map(len, samples)),
                "tokens": tokens, "generation_seconds": seconds, "tokens_per_second": tokens / seconds if seconds else None,
                "generation": generation.as_dict(), "batch_size": size}

    def _seed(self, start: int) -> int:
        """Round ``r``'s batch at prompt ``start``: its own seed, fixed by --seed."""
        return self.options.seed + 1_000_003 * (self.number - 1) + start

    def _samples(self) -> list:
        from dpo_plugins.formats.files import read_rows

        grouped: list = [[] for _ in self.settings.prompts]
        for _, row in read_rows(self.dir / "samples.jsonl"):
            grouped[row["prompt_index"]].append(row["completion"])
        return grouped

    def _judge(self, records) -> dict:
        from dpo_plugins.evals.stats import mean_interval

        options, samples = self.options, self._samples()
        if options.judge == DICE:
            scores, info = self._dice(samples)
        else:
            scores, info = self._judged(samples)
        for p, group in enumerate(scores):
            bad = [s for s in group if not _number(s)]
            if bad:
                raise DpoPluginsError(f"judge {options.judge!r} gave prompt {p + 1} the score(s) {bad[:3]}; "
                                      "expected finite numbers")
        _write_rows(self.dir / "scores.jsonl", (
            {"prompt_index": p, "sample_index": k, "score": score, "judge": info}
            for p, group in enumerate(scores) for k, score in enumerate(group)))
        flat = [s for group in scores for s in group]
        return {"judge": info, "n_scores": len(flat), "mean_score": sum(flat) / len(flat),
                "mean_score_ci": mean_interval(flat), "mean_score_ci_method": "normal 95% over all samples"}

    def _dice(self, samples) -> tuple[list, dict]:
        from dpo_plugins.evals.sample_scores import dice_scores

        reference = Path(self.options.dice_ref) if self.number == 1 else Path(self.earlier[-1]["reference"])
        if self.number == 1:
            from dpo_plugins.adapters.models import resolve_model

            reference = resolve_model(str(reference))
        model, tokenizer = self._model(self.policy)
        reference_model, _ = self._model(reference)
        scores = dice_scores(model, reference_model, tokenizer, self.settings.prompts, samples, self.settings.beta,
                             self.options.eval_batch_size)
        return scores, {"name": DICE, "policy": str(self.policy), "reference": str(reference),
                        "beta": self.settings.beta, "score": "beta * (log pi - log pi_ref), summed over tokens"}

    def _judged(self, samples) -> tuple[list, dict]:
        from dpo_plugins.evals.sample_scores import judge_scores

        options, cache = self.options, self.dir / "judge-cache"
        scores, info = [], None
        for p, (prompt, group) in enumerate(zip(self.settings.prompts, samples)):
            entry = cache / f"{p:06d}.json"
            if entry.is_file():
                stored = json.loads(entry.read_text(encoding="utf-8"))
            else:
                try:
                    found, judge_info = judge_scores(options.judge, options.judge_mode, prompt, group,
                                                     options.judge_param)
                except DpoPluginsError as error:
                    raise DpoPluginsError(f"prompt {p + 1} of {options.prompts}: {error}; the {p} judged before "
                                          "it are not judged again") from error
                stored = {"scores": found, "judge": {**judge_info, "mode": options.judge_mode}}
                write_text(entry, json.dumps(stored, allow_nan=False) + "\n")
            scores.append(stored["scores"])
            info = stored["judge"]
        return scores, info

    def _pairs(self, records) -> dict:
        from dpo_plugins.evals.sample_scores import trl_row
        from dpo_plugins.formats.files import read_rows
        from dpo_plugins.plugins import lookup_registration

        options, prompts, samples = self.options, self.settings.prompts, self._samples()
        scores: list = [[] for _ in prompts]
        judge = None
        for _, row in read_rows(self.dir / "scores.jsonl"):
            scores[row["prompt_index"]].append(row["score"])
            judge = row["judge"]
        registration = lookup_registration("pair_builder", options.pair_builder)
        params = {**registration.spec.params, **options.pair_param}
        builder = {"name": options.pair_builder, "provider": registration.provider, "params": params}
        rows, built, dropped = [], 0, 0
        for p, (prompt, group, group_scores) in enumerate(zip(prompts, samples, scores)):
            pairs, ties = build_pairs(options.pair_builder, group_scores, options.pair_param)
            built, dropped = built + len(pairs), dropped + ties
            for chosen, rejected in pairs:
                row = trl_row(prompt, group[chosen], group[rejected])
                row["dpo_metadata"] = {"round": self.number, "prompt_index": p, "chosen_index": chosen,
                                       "rejected_index": rejected, "chosen_score": group_scores[chosen],
                                       "rejected_score": group_scores[rejected], "judge": judge,
                                       "pair_builder": builder, "policy": str(self.policy)}
                rows.append(row)
        if not rows:
            raise DpoPluginsError(f"every candidate pair was a tie: {dropped} dropped by pair builder "
                                  f"{options.pair_builder!r} ({json.dumps(params)}), none left to train on")
        _write_rows(self.dir / "pairs.jsonl", rows)
        if options.azure:
            _write_rows(self.dir / "pairs.azure.jsonl", (_hosted_row(row) for row in rows))
        return {"pair_builder": builder, "built": built, "dropped": dropped,
                "prompts_without_pair": sum(1 for p in range(len(prompts)) if not any(
                    r["dpo_metadata"]["prompt_index"] == p for r in rows))}

    def _reference(self) -> Optional[Path]:
        """This round's training reference: None means the policy it starts from (dpo train's default)."""
        if self.options.reference == "initial" and self.policy.resolve() != self.initial.resolve():
            return self.initial
        return None

    def _train(self, records) -> dict:
        from dpo_plugins.workflows.train import train

        target = self.dir / "model"
        claim_folder(target, "dpo iterate", empty=True)  # a killed attempt's checkpoints are not resumed
        reference = self._reference()
        self._models.clear()  # training loads its own copies
        settings = round_train_settings(self.settings, self.dir / "pairs.jsonl", target, self.policy, reference)
        train(settings)
        state = json.loads((target / "trainer_state.json").read_text(encoding="utf-8"))
        losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
        return {"model": str(target), "reference": str(reference or self.policy), "steps": state.get("global_step"),
                "losses": losses}

    def _eval(self, records) -> dict:
        if not self.settings.eval_rows:
            return {"reward_accuracy": None}
        from dpo_plugins.evals.pipeline import EvalRequest, run_eval
        from dpo_plugins.evals.stats import wilson_interval

        options = self.options
        judged = options.judge != DICE and options.winrate_prompts > 0
        request = EvalRequest(
            model=records["train"]["model"], ref=options.eval_ref or records["train"]["reference"],
            rows=list(self.settings.eval_rows),
            data=options.eval_data, reward_mode="dpo", batch_size=options.eval_batch_size, progress=False,
            max_length=self.settings.max_length,
            judge=options.judge if judged else None, judge_params=dict(options.judge_param),
            baseline=str(self.initial) if judged else None, max_prompts=options.winrate_prompts or None,
            generation={"max_new_tokens": options.max_new_tokens, "do_sample": False})
        metrics = run_eval(request, self.dir / "eval")
        correct = round(metrics["reward_accuracy"] * metrics["n_pairs"]) if metrics["n_pairs"] else 0
        return {"reward_accuracy": metrics["reward_accuracy"], "n_pairs": metrics["n_pairs"], "ref": request.ref,
                "reward_accuracy_ci": wilson_interval(correct, metrics["n_pairs"] - correct, 0),
                "win_rate": metrics.get("win_rate"), "win_rate_ci": metrics.get("win_rate_ci"),
                "report": str(self.dir / "eval")}


def build_pairs(name: str, scores, params: Optional[Mapping[str, Any]] = None) -> tuple[list, int]:
    """``(pairs, dropped)`` of one prompt's ``scores`` under the pair builder ``name``, its output checked."""
    from dpo_plugins.errors import PluginError
    from dpo_plugins.plugins import lookup_registration

    registration = lookup_registration("pair_builder", name)
    builder, provider = registration.spec, registration.provider
    try:
        pairs, dropped = builder.fn(list(scores), **{**builder.params, **(params or {})})
        pairs = [(int(c), int(r)) for c, r in pairs]
    except DpoPluginsError:
        raise
    except Exception as error:
        raise PluginError(f"pair builder {name!r} from {provider} failed: {type(error).__name__}: {error}") from error
    bad = [(c, r) for c, r in pairs if not (0 <= c < len(scores) and 0 <= r < len(scores)) or not scores[c] > scores[r]]
    if bad or not isinstance(dropped, int) or dropped < 0:
        raise PluginError(f"pair builder {name!r} from {provider} returned {bad[:3] or dropped!r}: each pair must be "
                          "(chosen, rejected) indices of the scores with the chosen one scored higher, and the "
                          "dropped count an integer >= 0")
    return pairs, dropped


def _hosted_row(row: dict) -> dict:
    """An HF pair as the ``azure`` format writes it, without the metadata a hosted job may reject
    (line N of ``pairs.azure.jsonl`` is line N of ``pairs.jsonl``, which keeps it)."""
    from dpo_plugins.plugins import get_format

    record = get_format("hf").to_record(row)
    record.metadata = {}
    return get_format("azure").from_record(record)


def _write_rows(path: Path, rows) -> None:
    """JSONL through the formats' row writer (temporary file, renamed into place when complete)."""
    from dpo_plugins.formats.files import RowWriter

    writer = RowWriter(path)
    try:
        for row in rows:
            writer.write(row)
        writer.commit()
    except BaseException:
        writer.discard()
        raise
