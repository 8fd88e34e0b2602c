"""One module per ``dpo`` subcommand (see ``dpo_plugins.cli``)."""
