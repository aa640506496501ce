"""Placeholder: the classification modules are being written."""

__all__: list[str] = []
