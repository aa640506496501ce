"""Triton kernels of the cosine and distance losses: row statistics and gradient combinations.

Every distance and cosine loss between rows a, b (and a third row c for the
triplet loss) has a gradient that is, per row, a linear combination of the
input rows: for the euclidean distance ∂d/∂a = (a − b)/d, for the cosine
∂cos/∂a = b/(|a||b|) − cos·a/|a|². So a GPU pass needs only two kernels:

1. :func:`pair_stats_kernel` reads the rows once and writes four float32
   numbers per pair: a·b, |a|², |b|² and |a − b|² (the last computed from the
   difference itself, which keeps it exact for nearby points).
2. :func:`combine_rows_kernel` reads the rows again and writes each gradient
   row as Σ_k coef[k]·row_k, with the per-row coefficients computed by the
   loss in PyTorch from the statistics (N numbers, no pass over D).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["combine_rows_kernel", "pair_stats_kernel"]


@triton.jit
def pair_stats_kernel(
    a_ptr,
    a_row_stride,
    b_ptr,
    b_row_stride,
    stats_ptr,
    n_cols,
    BLOCK: tl.constexpr,
):
    """Write (a·b, |a|², |b|², |a − b|²) of one pair of rows, in float32."""
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK)
    dot = tl.zeros([BLOCK], tl.float32)
    aa = tl.zeros([BLOCK], tl.float32)
    bb = tl.zeros([BLOCK], tl.float32)
    dd = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        inside = cols < n_cols
        a = tl.load(a_ptr + row * a_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + row * b_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
        dot += a * b
        aa += a * a
        bb += b * b
        diff = a - b
        dd += diff * diff
    out = stats_ptr + row * 4
    tl.store(out, tl.sum(dot, 0))
    tl.store(out + 1, tl.sum(aa, 0))
    tl.store(out + 2, tl.sum(bb, 0))
    tl.store(out + 3, tl.sum(dd, 0))


@triton.jit
def combine_rows_kernel(
    x_ptr,
    y_ptr,
    z_ptr,
    row_stride,
    coef_ptr,
    gx_ptr,
    gy_ptr,
    gz_ptr,
    n_cols,
    HAS_Z: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Write gx = c₀x + c₁y + c₂z, gy = c₃x + c₄y + c₅z, gz = c₆x + c₇y + c₈z.

    ``coef`` contains 9 float32 numbers per row; without ``z`` the terms in z and
    the row gz are skipped. All inputs and outputs share ``row_stride``.
    """
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK)
    c = coef_ptr + row * 9
    c0 = tl.load(c)
    c1 = tl.load(c + 1)
    c3 = tl.load(c + 3)
    c4 = tl.load(c + 4)
    if HAS_Z:
        c2 = tl.load(c + 2)
        c5 = tl.load(c + 5)
        c6 = tl.load(c + 6)
        c7 = tl.load(c + 7)
        c8 = tl.load(c + 8)
    base = row * row_stride
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        inside = cols < n_cols
        x = tl.load(x_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
        gx = c0 * x + c1 * y
        gy = c3 * x + c4 * y
        if HAS_Z:
            z = tl.load(z_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
            gx += c2 * z
            gy += c5 * z
            gz = c6 * x + c7 * y + c8 * z
            tl.store(gz_ptr + base + cols, gz.to(gz_ptr.dtype.element_ty), mask=inside)
        tl.store(gx_ptr + base + cols, gx.to(gx_ptr.dtype.element_ty), mask=inside)
        tl.store(gy_ptr + base + cols, gy.to(gy_ptr.dtype.element_ty), mask=inside)
