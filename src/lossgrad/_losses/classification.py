"""Placeholder: the classification losses are being written."""

__all__: list[str] = []
