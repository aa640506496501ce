"""Placeholder: the linear losses are being written."""

__all__: list[str] = []
