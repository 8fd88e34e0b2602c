"""What each ``dpo`` command runs, one module per workflow (see docs/architecture.md)."""
