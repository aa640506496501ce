"""Placeholder: the info_nce modules are being written."""

__all__: list[str] = []
