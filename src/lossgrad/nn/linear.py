"""Placeholder: the linear modules are being written."""

__all__: list[str] = []
