"""Placeholder: the embedding losses are being written."""

__all__: list[str] = []
