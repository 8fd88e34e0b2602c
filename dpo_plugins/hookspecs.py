"""Every hook dpo-plugins calls, documented where it is declared.

A plugin is any module or object with functions marked ``@hookimpl`` whose
names match the hooks below. Registration hooks return (or yield) small
frozen records from :mod:`dpo_plugins.specs`; each record has a ``name`` that
is unique across all plugins of that kind.

Built-in plugins in ``dpo_plugins/default_plugins/`` implement these hooks
exactly as a third-party package would. ``docs/hooks.md`` has a section per
hook, and a test checks that each hook below has both.
"""

from __future__ import annotations

from typing import Iterable, Optional

import pluggy

from .specs import CheckResult, Format, Judge, Loss, MergeMethod, PairBuilder, StageInfo

hookspec = pluggy.HookspecMarker("dpo_plugins")
hookimpl = pluggy.HookimplMarker("dpo_plugins")


@hookspec
def register_formats() -> Iterable[Format]:
    """Return or yield the preference-data formats this plugin provides.

    A :class:`~dpo_plugins.specs.Format` turns one row of its schema into a
    canonical :class:`~dpo_plugins.records.PreferenceRecord` and back, and
    says whether a row looks like its schema (for ``dpo convert`` without
    ``--from``)::

        @hookimpl
        def register_formats():
            yield Format(name="my-pairs", description="question/good/bad",
                         to_record=my_row_to_record, from_record=my_record_to_row,
                         detect=lambda row: {"question", "good", "bad"} <= set(row))
    """


@hookspec
def register_losses() -> Iterable[Loss]:
    """Return or yield the DPO loss variants this plugin provides.

    A :class:`~dpo_plugins.specs.Loss` wraps ``fn(batch, beta, **params)``,
    which gets a :class:`~dpo_plugins.specs.LossBatch` of summed completion
    log-probs and returns the per-pair loss, shape ``(B,)``::

        @hookimpl
        def register_losses():
            def double_sigmoid(batch, beta, **params):
                margin = (batch.chosen_logps - batch.ref_chosen_logps) - (
                    batch.rejected_logps - batch.ref_rejected_logps)
                return -2 * torch.nn.functional.logsigmoid(beta * margin)
            yield Loss(name="double_sigmoid", fn=double_sigmoid)
    """


@hookspec
def register_merge_methods() -> Iterable[MergeMethod]:
    """Return or yield the model-merge methods this plugin provides.

    A :class:`~dpo_plugins.specs.MergeMethod` either names a mergekit method
    (``mergekit_method``) or merges one parameter at a time with
    ``fn(tensors, weights, **params)``::

        @hookimpl
        def register_merge_methods():
            def mean(tensors, weights, **params):
                return sum(w * t for w, t in zip(weights, tensors)) / sum(weights)
            yield MergeMethod(name="mean", fn=mean)
    """


@hookspec
def register_judges() -> Iterable[Judge]:
    """Return or yield the win-rate judges this plugin provides.

    A :class:`~dpo_plugins.specs.Judge` wraps ``fn(prompts, outputs_a,
    outputs_b, **params)``, which returns one verdict per prompt: ``"a"``,
    ``"b"`` or ``"tie"``, or the probability (a float in [0, 1]) that ``a``
    is better, kept as a continuous AlpacaEval preference::

        @hookimpl
        def register_judges():
            def shorter(prompts, outputs_a, outputs_b, **params):
                return ["a" if len(a) < len(b) else "b" if len(b) < len(a) else "tie"
                        for a, b in zip(outputs_a, outputs_b)]
            yield Judge(name="shorter", fn=shorter)
    """


@hookspec
def register_pair_builders() -> Iterable[PairBuilder]:
    """Return or yield the pair-building rules of ``dpo iterate`` this plugin provides.

    A :class:`~dpo_plugins.specs.PairBuilder` wraps ``fn(scores, **params)``:
    the judge's scores of one prompt's samples in, ``(pairs, dropped)`` out,
    where ``pairs`` lists ``(chosen_index, rejected_index)`` (the chosen one
    scored strictly higher) and ``dropped`` counts the candidate pairs left
    out as ties. ``dpo iterate --pair-builder NAME`` uses it::

        @hookimpl
        def register_pair_builders():
            def best_vs_second(scores, margin=0.0, **params):
                order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
                best, second = order[0], order[1]
                if scores[best] - scores[second] > margin:
                    return [(best, second)], 0
                return [], 1
            yield PairBuilder(name="best-vs-second", fn=best_vs_second, params={"margin": 0.0})
    """


@hookspec
def check_merged_model(checkpoint) -> Iterable[CheckResult]:
    """Return or yield checks of a freshly merged checkpoint; a failure vetoes it.

    ``checkpoint`` is a :class:`dpo_plugins.Checkpoint`:
    ``path``, the requested ``dtype`` (or None), ``config()`` (config.json as
    a dict), and the cached loaders ``tokenizer()`` and ``model()``. Every
    plugin's checks run; any ``CheckResult(passed=False)`` stops ``dpo merge``
    (nothing is written) and ``dpo anneal`` (before annealing)::

        @hookimpl
        def check_merged_model(checkpoint):
            layers = checkpoint.config()["num_hidden_layers"]
            yield CheckResult(name="depth", passed=layers >= 2,
                              message=f"{layers} layers")
    """


@hookspec
def before_stage(stage: StageInfo) -> Optional[str]:
    """Called before each workflow stage runs; return a reason to stop the run.

    ``stage`` is a :class:`~dpo_plugins.specs.StageInfo`. Stages that are
    skipped because their outputs are complete do not call it. Returning a
    non-empty string stops the workflow before this stage (earlier stages'
    outputs stay)::

        @hookimpl
        def before_stage(stage):
            print(f"[{stage.workflow}] {stage.index + 1}/{len(stage.stages)} {stage.name}")
            if stage.name == "anneal" and not os.environ.get("ALLOW_TRAINING"):
                return "training is disabled on this machine"
    """


@hookspec
def after_stage(stage: StageInfo, outputs) -> Optional[str]:
    """Called after a stage succeeded; return a reason to stop the run there.

    ``outputs`` maps names to the files or directories the stage produced
    (e.g. ``{"model": Path(".../merged")}``); they are complete when this is
    called. Returning a non-empty string stops the workflow after this stage::

        @hookimpl
        def after_stage(stage, outputs):
            if stage.name == "merge":
                size = sum(f.stat().st_size for f in outputs["model"].glob("*.safetensors"))
                return None if size < 10**9 else "merged model is larger than 1 GB"
    """


@hookspec
def on_stage_error(stage: StageInfo, error: BaseException) -> None:
    """Called when a stage fails (or a plugin stopped it), before the error is reported.

    Earlier stages' outputs are intact; the failed stage left nothing
    behind. Use it to log or alert; the return value is ignored::

        @hookimpl
        def on_stage_error(stage, error):
            with open("failures.log", "a") as log:
                log.write(f"{stage.workflow}/{stage.name}: {error}\n")
    """
