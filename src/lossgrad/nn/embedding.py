"""Placeholder: the embedding modules are being written."""

__all__: list[str] = []
