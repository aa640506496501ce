"""lossgrad: PyTorch training losses with hand-derived backward passes.

Every loss is a ``torch.autograd.Function`` whose backward is a documented
closed form. The functions mirror ``torch.nn.functional`` names and
signatures, so swapping the import is enough::

    import lossgrad as LF
    loss = LF.cross_entropy(logits, target, label_smoothing=0.1)
"""

from . import nn
from ._formula import FORMULAS, Formula
from ._losses.classification import *  # noqa: F401,F403
from ._losses.divergence import *  # noqa: F401,F403
from ._losses.embedding import *  # noqa: F401,F403
from ._losses.info_nce import *  # noqa: F401,F403
from ._losses.linear import *  # noqa: F401,F403
from ._losses.regression import *  # noqa: F401,F403
from ._losses import (
    classification as _classification,
    divergence as _divergence,
    embedding as _embedding,
    info_nce as _info_nce,
    linear as _linear,
    regression as _regression,
)

__version__ = "0.1.0"

__all__ = [
    "FORMULAS",
    "Formula",
    *_classification.__all__,
    *_divergence.__all__,
    *_embedding.__all__,
    *_info_nce.__all__,
    *_linear.__all__,
    *_regression.__all__,
]
