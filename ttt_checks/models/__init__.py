"""Model adapters: every model-specific line lives behind :class:`~ttt_checks.models.base.Adapter`."""
