"""Placeholder: the info_nce losses are being written."""

__all__: list[str] = []
