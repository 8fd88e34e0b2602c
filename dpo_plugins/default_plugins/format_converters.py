"""Built-in preference-data formats, registered like any third-party plugin.

The converters live in :mod:`dpo_plugins.formats`; this module only names
them. ``docs/formats.md`` documents every format and rule.
"""

from __future__ import annotations

from functools import partial

from ..formats import axolotl, azure, hf, hh, llamafactory, rewardbench, ultrafeedback
from ..hookspecs import hookimpl
from ..specs import Format


@hookimpl
def register_formats():
    for profile, label in (("azure", "Azure OpenAI"), ("openai", "OpenAI")):
        yield Format(
            name=profile,
            description=f"{label} preference JSONL: input / preferred_output / non_preferred_output ({profile} profile)",
            to_record=partial(azure.to_record, profile=profile),
            from_record=partial(azure.from_record, profile=profile),
            # Both share one schema: auto-detection says azure; --from openai applies the stricter profile.
            detect=azure.detect if profile == "azure" else None,
            lint=azure.lint,
            check_file=azure.check_file,
            schema="openai-preference",
            max_example_tokens=azure.EXAMPLE_TOKEN_LIMIT,
        )
    yield Format(name="hf", description="TRL pairs: prompt / chosen / rejected, standard or conversational (+ tools)",
                 to_record=hf.to_record, from_record=hf.from_record, detect=hf.detect)
    yield Format(name="hh", description="Anthropic HH-RLHF: chosen / rejected Human/Assistant transcripts",
                 to_record=hh.to_record, from_record=hh.from_record, detect=hh.detect)
    yield Format(name="ultrafeedback", description="UltraFeedback binarized (and Axolotl chatml.ultra): scores kept",
                 to_record=ultrafeedback.to_record, from_record=ultrafeedback.from_record,
                 detect=ultrafeedback.detect)
    yield Format(name="rewardbench", description="RewardBench: prompt (string or turns) / chosen / rejected strings / subset",
                 to_record=rewardbench.to_record, from_record=rewardbench.from_record, detect=rewardbench.detect)
    yield Format(name="llamafactory-alpaca", description="LLaMA-Factory alpaca ranking: instruction / input / chosen / rejected",
                 to_record=llamafactory.alpaca_to_record, from_record=llamafactory.alpaca_from_record,
                 detect=llamafactory.alpaca_detect)
    yield Format(name="llamafactory-sharegpt", description="LLaMA-Factory sharegpt ranking: conversations + chosen / rejected turns",
                 to_record=llamafactory.sharegpt_to_record, from_record=llamafactory.sharegpt_from_record,
                 detect=llamafactory.sharegpt_detect)
    yield Format(name="axolotl-chatml-intel", description="Axolotl chatml.intel: system / question / chosen / rejected",
                 to_record=axolotl.intel_to_record, from_record=axolotl.intel_from_record,
                 detect=axolotl.intel_detect)
    yield Format(name="axolotl-chat-template", description="Axolotl chat_template.default: messages + chosen / rejected messages",
                 to_record=axolotl.template_to_record, from_record=axolotl.template_from_record,
                 detect=axolotl.template_detect)
