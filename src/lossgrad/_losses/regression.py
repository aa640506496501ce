"""Placeholder: the regression losses are being written."""

__all__: list[str] = []
