"""Placeholder: the divergence modules are being written."""

__all__: list[str] = []
