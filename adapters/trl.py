"""TRL's ``DPOTrainer`` with its loss taken from the plugin registry.

TRL picks the DPO loss from a hard-coded chain inside the private
``DPOTrainer._compute_loss``. :class:`PluginDPOTrainer` replaces that one
method: everything else (tokenization, collation, PEFT, reference handling,
checkpoints, accelerate) stays TRL's. ``args.loss_type`` names registered
losses (``sigmoid``, ``ipo``, a third party's ...), ``args.loss_weights``
weighs them exactly as TRL does, and ``loss_params`` sets the losses' own
parameters.

This is the one module that depends on TRL internals, so it supports exactly
the TRL versions in :data:`SUPPORTED_TRL` and refuses others with a clear
message (pyproject pins the same range).

The per-pair log-probs come from ONE method, :meth:`PluginDPOTrainer.
compute_pair_logps`; a faster forward (prefix-shared packing, cached
reference log-probs) overrides only that method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import trl
from packaging.specifiers import SpecifierSet
from peft import PeftModel
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from dpo_plugins.errors import DpoPluginsError, HealthCheckError
from dpo_plugins.specs import PairLogps

from .loss_selection import select_losses
from .packing import unsupported_reason
from .ddp_forward import is_ddp, through_wrapper
from .padded_batches import WEIGHTS_KEY, WeighRepeatedPairs

SUPPORTED_TRL = ">=1.16,<1.17"
LN2 = math.log(2)
logger = logging.getLogger("dpo_plugins.train")

# Keys of a collated batch that are not model inputs.
NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps", WEIGHTS_KEY})


def check_trl_version(version: str = trl.__version__) -> None:
    """Fail clearly on a TRL release whose DPOTrainer internals we do not know."""
    if version not in SpecifierSet(SUPPORTED_TRL):
        raise DpoPluginsError(
            f"dpo-plugins' trainer overrides DPOTrainer internals of trl {SUPPORTED_TRL}, "
            f"but trl {version} is installed: pip install 'trl{SUPPORTED_TRL}'"
        )


check_trl_version()


# -- the forward ----------------------------------------------------------------


@dataclass
class TokenStats:
    """Sums behind TRL's token metrics (entropy, logits/*, mean_token_accuracy), each per pair ``(B,)``."""

    entropy_sum: Any
    chosen_logits_sum: Any
    rejected_logits_sum: Any
    chosen_correct: Any
    chosen_tokens: Any
    rejected_tokens: Any

    def summed(self, keep=None) -> "TokenStats":
        """The sums over the pairs (those where ``keep`` is true, when given)."""
        return TokenStats(**{
            field.name: (value if keep is None else value[keep]).sum()
            for field in dataclasses.fields(self) for value in [getattr(self, field.name)]
        })


@dataclass
class PairForward:
    """What one training forward yields: the pairs' sums, and what only training needs beside them.

    ``sums`` (:class:`~dpo_plugins.specs.PairLogps`, shape ``(B,)`` each):
    ``chosen_logps``/``rejected_logps`` carry the policy's gradient; ``ref_*``
    are ``None`` when no selected loss needs a reference. ``token_stats`` and
    ``aux_loss`` are optional (metrics, MoE models).
    """

    sums: PairLogps
    token_stats: Optional[TokenStats] = None
    aux_loss: Any = None
    # per-token log-probs (a token_logps.TokenLogps) when the losses or modifiers need them;
    # ref_tokens only for LD-DPO with a per-step reference forward.
    tokens: Any = None
    ref_tokens: Any = None



@contextlib.contextmanager
def _settings_trl_accepts(args, forward_needs):
    """``DPOTrainer.__init__`` checks the modifiers and ``label_smoothing`` against TRL's own
    loss names (which a plugin's is not, and a built-in's parameters have their own defaults; ours were
    checked against the losses' declarations), and adds WPO's statistic to its fused LM head only under
    ``use_weighting``. Show it settings it accepts, then restore the user's (only TRL's loss chain, which
    this trainer replaces, reads them afterwards)."""
    accepted = {"loss_type": ["sigmoid"], "f_divergence_type": "reverse_kl",
                "use_weighting": "log_sum_sq_probs" in forward_needs}
    saved = {name: getattr(args, name) for name in accepted}
    for name, value in accepted.items():
        setattr(args, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(args, name, value)


class PluginDPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose loss is ``sum_i weight_i * mean(plugin_i(batch, beta, **params_i))``.

    Extra keyword arguments: ``loss_params`` (``{"key" | "loss.key": value}``;
    or ``loss_terms``, already selected by :func:`~.loss_selection.select_losses`)
    and ``check_reference`` (default True: at step 0 the policy and the
    reference must give the same log-probs; pass False when the reference
    is deliberately another model) and ``packed_forward`` (default True:
    per-pair log-probs from the prefix-shared, packed forward of
    :mod:`dpo_plugins.adapters.packing`, and precomputed reference log-probs
    through the on-disk cache of :mod:`dpo_plugins.adapters.ref_cache`;
    False: TRL's own two-row forward and precompute). Both give the same
    numbers; the packed one is faster. ``ref_cache``: that cache (a
    ``RefLogpsCache``; default: under ``$DPO_PLUGINS_CACHE``).
    """

    def __init__(
        self, model, ref_model=None, args=None, *, loss_params=None, loss_terms=None, check_reference=True,
        packed_forward=True,
        ref_cache=None, **kwargs
    ):
        self.packed_forward = packed_forward
        self.ref_cache = ref_cache
        if args is None:
            raise DpoPluginsError("PluginDPOTrainer needs args (a trl.DPOConfig)")
        # dpo train selects (and checks) the losses before loading anything and hands them over
        self.loss_terms = loss_terms or select_losses(args, loss_params, ref_model is not None)
        self.needs_reference = any(term.needs_reference for term in self.loss_terms)
        # -- what the forward computes, and the modifiers (checked above against the losses) --
        from .modifiers import forward_needs

        self.forward_needs = forward_needs(self.loss_terms, args)
        self.check_reference = check_reference and self.needs_reference
        # Health checks still to run, and how many logs in a row sat at ln 2.
        self._reference_checked = not self.check_reference
        self._gradients_checked = False
        self._ln2_logs = 0
        logger.info("loss = %s", " + ".join(term.describe() for term in self.loss_terms))
        if self.needs_reference:
            with _settings_trl_accepts(args, self.forward_needs):
                super().__init__(model, ref_model, args, **kwargs)
            return
        # TRL loads a reference model unless the reference log-probs are
        # precomputed; claim they are, and precompute nothing.
        args.precompute_ref_log_probs = True
        try:
            with _settings_trl_accepts(args, self.forward_needs):
                super().__init__(model, None, args, **kwargs)
        finally:
            args.precompute_ref_log_probs = False
        self.precompute_ref_logps = False
        self.ref_model = None

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """TRL's tokenization, with the pairs it drops for length counted aloud (and none left an error)."""
        before = len(dataset) if hasattr(dataset, "__len__") else None
        prepared = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if before is None or not hasattr(prepared, "__len__") or len(prepared) == before:
            return prepared
        dropped = before - len(prepared)
        if not len(prepared):
            raise DpoPluginsError(f"{dataset_name} data: all {before} pairs have a prompt that fills max_length "
                                  f"{args.max_length}, so none is left to train on: raise --max-length")
        logger.warning("%s data: %d of %d pairs dropped: the prompt alone fills max_length %s (TRL drops them)",
                       dataset_name, dropped, before, args.max_length)
        return prepared

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if not self.needs_reference:
            return dataset
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not self._packs(self.ref_model or self.model):
            # DeepSpeed / FSDP: TRL's precompute places the weights for the engine. Under DDP the processes
            # share ours (each scores its share of the batches, all gather them, the main process alone
            # writes the one entry: .ref_cache): TRL's splits them too, but then reads a file only rank 0
            # wrote, which other processes cannot see for in-memory data.
            return super()._precompute_ref_logps(dataset, name, batch_size)
        from dpo_plugins.adapters.ref_cache import reference_logps

        pairs = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list()
        reference = self.ref_model or self.model
        with self._reference_context():
            chosen, rejected, hit = reference_logps(
                reference, self.processing_class, pairs, self.args.max_length, self.args.truncation_mode, batch_size,
                self.ref_cache, ld_alpha=self.args.ld_alpha,  # LD-DPO's reference sums
            )
        logger.info("reference log-probs for %s: %s", name, "read from the cache" if hit else "computed and cached")
        return dataset.add_column("ref_chosen_logps", chosen.tolist()).add_column("ref_rejected_logps", rejected.tolist())

    def _packs(self, model) -> bool:
        """Whether the packed forward serves ``model`` here (else TRL's forward does, with the same numbers).

        It needs the bare model or a DDP wrapper (run through the wrapper's
        forward: :func:`~.ddp_forward.through_wrapper`; an FSDP / DeepSpeed
        engine must run its own forward), no MoE auxiliary loss, and a model
        it supports (:func:`~dpo_plugins.adapters.packing.unsupported_reason`).
        """
        if not self.packed_forward or self.aux_loss_enabled or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return False  # FSDP2 shards in place (no wrapper to see): the engine's own forward must gather weights
        bare = self.accelerator.unwrap_model(model)
        if model is not bare and not is_ddp(model):
            return False
        return unsupported_reason(bare) is None

    # -- the one overridable forward -------------------------------------

    def compute_pair_logps(self, model, inputs) -> PairForward:
        """Policy (with grad) and reference (without) log-prob sums per pair.

        ``inputs`` is a batch from TRL's ``DataCollatorForPreference``:
        ``input_ids`` rows ``[chosen_1..chosen_B, rejected_1..rejected_B]``,
        ``attention_mask``, ``completion_mask`` (and ``ref_*_logps`` when
        precomputed). Override this to change how log-probs are computed;
        the losses, metrics and health checks stay as they are.
        """
        if self._packs(model):
            return self._packed_pair_logps(model, inputs)
        model_kwargs = {key: value for key, value in inputs.items() if key not in NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.size(1) - 1
        chosen_logps, rejected_logps = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        chosen_lengths, rejected_lengths = completion_mask.sum(dim=1).float().chunk(2, dim=0)

        ref_chosen_logps = ref_rejected_logps = None
        if self.needs_reference and self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        elif self.needs_reference:
            ref_kwargs = {key: value for key, value in model_kwargs.items() if key != "output_router_logits"}
            with torch.no_grad(), disable_gradient_checkpointing(
                self.model, self.args.gradient_checkpointing_kwargs
            ), self._reference_context():
                reference = self.ref_model if self.ref_model is not None else self.model
                ref_outputs = reference(**ref_kwargs, labels=labels, fused_lm_head=True)
            ref_chosen_logps, ref_rejected_logps = ref_outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)

        # -- per-token log-probs, for the losses and modifiers that need them --
        tokens = ref_tokens = None
        if "tokens" in self.forward_needs:
            from .token_logps import TokenLogps

            sq = outputs.log_sum_sq_probs[:, -seq_len:] if "log_sum_sq_probs" in self.forward_needs else None
            tokens = TokenLogps.from_sequences(outputs.log_probs[:, -seq_len:], completion_mask[..., 1:], sq)
            if self.args.ld_alpha is not None and self.needs_reference and not self.precompute_ref_logps:
                ref_tokens = TokenLogps.from_sequences(ref_outputs.log_probs[:, -seq_len:], completion_mask[..., 1:])
        return PairForward(
            PairLogps(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_lengths,
                      rejected_lengths),
            token_stats=_token_stats(outputs, completion_mask[..., 1:], seq_len),
            aux_loss=outputs.aux_loss if self.aux_loss_enabled else None,
            tokens=tokens,
            ref_tokens=ref_tokens,
        )

    def _packed_pair_logps(self, model, inputs) -> PairForward:
        """The same sums from the prefix-shared, packed forward (:mod:`dpo_plugins.adapters.packing`)."""
        from dpo_plugins.adapters.packing import collated_pair_logps

        # per-token log-probs (and WPO's statistic) only when the losses or modifiers need them
        per_token, log_sum_sq = "tokens" in self.forward_needs, "log_sum_sq_probs" in self.forward_needs
        out = through_wrapper(model, lambda bare: collated_pair_logps(bare, inputs, token_sums=True, per_token=per_token,
                                                                      log_sum_sq=log_sum_sq))
        (policy, sums), tokens = out[:2], (out[2] if per_token else None)
        ref_ld = self.args.ld_alpha is not None and self.needs_reference and not self.precompute_ref_logps
        ref_tokens = None
        ref_chosen_logps = ref_rejected_logps = None
        if self.needs_reference and self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        elif self.needs_reference:
            reference = self.ref_model if self.ref_model is not None else self.model
            with torch.no_grad(), disable_gradient_checkpointing(
                self.model, self.args.gradient_checkpointing_kwargs
            ), self._reference_context():
                if ref_ld:
                    ref, _, ref_tokens = collated_pair_logps(reference, inputs, per_token=True)
                else:
                    ref = collated_pair_logps(reference, inputs)
            ref_chosen_logps, ref_rejected_logps = ref.chosen_logps, ref.rejected_logps
        chosen_mask, rejected_mask = inputs["completion_mask"][..., 1:].chunk(2, dim=0)
        stats = TokenStats(
            entropy_sum=sums.chosen_entropy + sums.rejected_entropy,
            chosen_logits_sum=sums.chosen_mean_logits,
            rejected_logits_sum=sums.rejected_mean_logits,
            chosen_correct=sums.chosen_top1.long(),
            chosen_tokens=chosen_mask.sum(dim=1),
            rejected_tokens=rejected_mask.sum(dim=1),
        )
        return PairForward(
            dataclasses.replace(policy, ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps),
            token_stats=stats,
            tokens=tokens,
            ref_tokens=ref_tokens,
        )

    def _reference_context(self):
        """With PEFT and no separate reference: the adapter-free model (or TRL's frozen "ref" adapter)."""
        if self.ref_model is not None:
            return contextlib.nullcontext()
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not isinstance(unwrapped, PeftModel):
            return contextlib.nullcontext()
        return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)

    # -- the loss ------------------------------------------------------------

    def _compute_loss(self, model, inputs, return_outputs):
        if return_outputs:
            raise DpoPluginsError(
                "compute_metrics / prediction logits are not supported with plugin losses "
                "(set prediction_loss_only=True)"
            )
        mode = "train" if self.model.training else "eval"
        forward = self.compute_pair_logps(model, inputs)
        # -- LD-DPO sums, f-divergence scores, token fields, WPO weights, the losses' metrics --
        from .loss_eval import build_loss_batch, combined_loss, with_ld_sums

        forward = with_ld_sums(forward, self.args.ld_alpha)
        batch = build_loss_batch(forward, self.forward_needs, self.args.f_divergence_type,
                                 self.args.f_alpha_divergence_coef)
        pair_weights = inputs.get(WEIGHTS_KEY)  # the repeats of a padded last batch weigh 0 (.padded_batches)
        loss, loss_metrics = combined_loss(self.loss_terms, batch, self.beta, forward.tokens, self.args.use_weighting,
                                           pair_weights)
        for name, value in loss_metrics.items():
            value = torch.as_tensor(value, device=forward.sums.chosen_logps.device).detach().float()
            self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.reshape(1)).mean().item())
        if forward.aux_loss is not None:
            loss = loss + self.router_aux_loss_coef * forward.aux_loss
            self._metrics[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(forward.aux_loss).mean().item()
            )
        if mode == "train" and not self._reference_checked:
            self._check_reference_agrees(forward)
        self._record_metrics(mode, forward, inputs)
        return loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The training batches, the last of an epoch marked when accelerate padded it with repeated pairs."""
        return super().get_batch_samples(WeighRepeatedPairs(epoch_iterator, self.accelerator), num_batches, device)

    def _record_metrics(self, mode, forward, inputs):
        """TRL's metrics under TRL's names; with no reference the log-ratios are the policy log-probs.

        Pairs repeated to pad a last batch (:mod:`.padded_batches`) count in none of them, so they
        are one process's on the same global batch.
        """
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        stats = forward.token_stats
        if stats is not None:
            stats = stats.summed(inputs[WEIGHTS_KEY] > 0 if WEIGHTS_KEY in inputs else None)
            entropy_sum = gather(stats.entropy_sum).sum()
            tokens = gather(stats.chosen_tokens + stats.rejected_tokens).sum()
            metrics["entropy"].append((entropy_sum / tokens).item() if tokens > 0 else 0.0)
        if mode == "train" and "attention_mask" in inputs:
            rows = inputs["attention_mask"]
            if WEIGHTS_KEY in inputs:  # rows are [chosen_1..chosen_B, rejected_1..rejected_B]
                rows = rows[(inputs[WEIGHTS_KEY] > 0).repeat(2)]
            self._total_train_tokens += gather(rows.sum()).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        if stats is not None:
            chosen_tokens = gather(stats.chosen_tokens).sum().item()
            rejected_tokens = gather(stats.rejected_tokens).sum().item()
            chosen_logits = gather(stats.chosen_logits_sum).sum().item()
            rejected_logits = gather(stats.rejected_logits_sum).sum().item()
            correct = gather(stats.chosen_correct).sum().item()
            metrics["logits/chosen"].append(chosen_logits / chosen_tokens if chosen_tokens > 0 else 0.0)
            metrics["logits/rejected"].append(rejected_logits / rejected_tokens if rejected_tokens > 0 else 0.0)
            metrics["mean_token_accuracy"].append(correct / chosen_tokens if chosen_tokens > 0 else 0.0)

        sums = forward.sums
        chosen = sums.chosen_logps.detach()
        rejected = sums.rejected_logps.detach()
        if sums.ref_chosen_logps is not None:
            chosen = chosen - sums.ref_chosen_logps
            rejected = rejected - sums.ref_rejected_logps
        chosen_rewards, rejected_rewards = self.beta * chosen, self.beta * rejected
        gather_all = self.accelerator.gather
        if WEIGHTS_KEY in inputs:
            real = self.accelerator.gather(inputs[WEIGHTS_KEY] > 0)
            gather_all = lambda values: self.accelerator.gather(values)[real]  # noqa: E731
        metrics["rewards/chosen"].append(gather_all(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather_all(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather_all((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather_all(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather_all(sums.chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather_all(sums.rejected_logps.detach()).mean().item())

    # -- health checks ---------------------------------------------------------

    def _check_reference_agrees(self, forward):
        """At step 0 the policy is its own reference: their log-probs must agree."""
        self._reference_checked = True
        if self.state.global_step != 0:  # resumed from a checkpoint: the policy has moved
            return
        sums = forward.sums
        policy = torch.cat([sums.chosen_logps, sums.rejected_logps]).detach().float()
        reference = torch.cat([sums.ref_chosen_logps, sums.ref_rejected_logps]).detach().float()
        # Half-precision weights give half-precision hidden states, whatever dtype the sums are in.
        exact = self.accelerator.unwrap_model(self.model).get_output_embeddings().weight.dtype == torch.float32
        rtol, atol = (1e-4, 1e-3) if exact else (2e-2, 0.5)
        gap = (policy - reference).abs()
        if bool((gap > atol + rtol * reference.abs()).any()):
            raise HealthCheckError(
                f"health check failed at step 0: policy and reference log-probs differ (max |diff| "
                f"{gap.max().item():.4g} over {gap.numel()} sequences). The reference is not the initial "
                "policy: a LoRA adapter that was already trained (e.g. continuing from an SFT adapter), "
                "dropout left on (disable_dropout=False), or a reference that is another model. If the "
                "reference is meant to differ, pass it explicitly (--ref-model PATH)."
            )

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self._gradients_checked:  # the first step: say which forward serves this model, wrapped as it is
            logger.info("forward: %s", "packed (prefix-shared pairs)" if self._packs(model) else "TRL's two-row forward")
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self._gradients_checked:
            self._gradients_checked = True
            self._check_gradients(model)
        return loss

    def _check_gradients(self, model):
        """After the first backward: some trainable parameter got a finite, non-zero gradient."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return  # gradients live in sharded buffers there
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise HealthCheckError("health check failed: the model has no trainable parameters")
        bad = [name for name, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise HealthCheckError(
                f"health check failed at step 0: non-finite gradients in {', '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''} (lower the learning rate, or use fp32 / bf16 instead of fp16)"
            )
        if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for _, p in trainable):
            raise HealthCheckError(
                f"health check failed at step 0: none of the {len(trainable)} trainable parameters received "
                "a non-zero gradient. The loss does not depend on them: frozen or detached parameters, a "
                "loss plugin that detaches its inputs, or completions fully truncated by max_length."
            )

    def log(self, logs, start_time=None):
        super().log(logs, start_time)
        if "loss" in logs and "eval_loss" not in logs:
            self._explain_ln2(logs)

    def _explain_ln2(self, logs):
        """Loss at ln 2: the sigmoid-family losses see a zero margin, i.e. nothing is learned yet."""
        if abs(logs["loss"] - LN2) > 1e-3 or not self.needs_reference:
            self._ln2_logs = 0
            return
        self._ln2_logs += 1
        step = self.state.global_step
        if self._ln2_logs == 1 and step <= max(1, self.args.logging_steps):
            logger.info(
                "loss %.4f = ln 2 at step %d, as expected: the policy starts equal to the reference, so the "
                "margin is 0 and -log sigmoid(0) = ln 2. It should fall as training proceeds.",
                logs["loss"], step,
            )
        elif self._ln2_logs >= 3:
            logger.warning(
                "loss has stayed at ln 2 = %.4f for %d logs (step %d): the policy's chosen-vs-rejected margin "
                "is not moving away from the reference's. Usual causes: a learning rate too small for this "
                "setup (TRL's default is 1e-6), beta very small, LoRA modules that do not reach the layers "
                "that matter, or a reference that tracks the policy.",
                LN2, self._ln2_logs, step,
            )



def _token_stats(outputs, shift_completion_mask, seq_len) -> Optional[TokenStats]:
    """Per-pair sums for TRL's token metrics, from the fused LM head's per-token outputs."""
    if outputs.entropy is None or outputs.mean_logits is None or outputs.is_top1 is None:
        return None
    chosen_mask, rejected_mask = shift_completion_mask.bool().chunk(2, dim=0)
    chosen_mean_logits, rejected_mean_logits = outputs.mean_logits[:, -seq_len:].detach().chunk(2, dim=0)
    chosen_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
    entropy = (outputs.entropy[:, -seq_len:].detach() * shift_completion_mask).sum(dim=1)
    return TokenStats(
        entropy_sum=sum(entropy.chunk(2, dim=0)),
        chosen_logits_sum=chosen_mean_logits.masked_fill(~chosen_mask, 0).sum(dim=1),
        rejected_logits_sum=rejected_mean_logits.masked_fill(~rejected_mask, 0).sum(dim=1),
        chosen_correct=(chosen_top1 & chosen_mask).sum(dim=1),
        chosen_tokens=chosen_mask.sum(dim=1),
        rejected_tokens=rejected_mask.sum(dim=1),
    )
