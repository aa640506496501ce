"""Placeholder: the regression modules are being written."""

__all__: list[str] = []
