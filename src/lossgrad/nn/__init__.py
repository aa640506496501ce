"""Thin ``torch.nn.Module`` wrappers: each stores its options and calls the function."""

from . import (
    classification as _classification,
    divergence as _divergence,
    embedding as _embedding,
    info_nce as _info_nce,
    linear as _linear,
    regression as _regression,
)
from .classification import *  # noqa: F401,F403
from .divergence import *  # noqa: F401,F403
from .embedding import *  # noqa: F401,F403
from .info_nce import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .regression import *  # noqa: F401,F403

__all__ = [
    *_classification.__all__,
    *_divergence.__all__,
    *_embedding.__all__,
    *_info_nce.__all__,
    *_linear.__all__,
    *_regression.__all__,
]
