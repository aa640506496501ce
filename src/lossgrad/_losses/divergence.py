"""Placeholder: the divergence losses are being written."""

__all__: list[str] = []
