"""The built-in preference-data formats and the machinery around them.

One module per schema (``azure``, ``hf``, ``hh``, ``ultrafeedback``,
``llamafactory``, ``axolotl``) converts rows to and from the canonical
:class:`~dpo_plugins.records.PreferenceRecord`; ``files`` reads and writes
containers (``dpo_plugins.workflows.convert`` runs conversion and validation over a file);
``lint`` holds the cross-format checks. Nothing here is imported by
``import dpo_plugins``.
"""
