"""The CrAM step's perturbation, w + rho * g, as every kernel computes it.

The bracket select's sample, its full pass and its exact fallback, and the radix select's first
pass each compute the perturbed weights; the fallback recomputes them from the saved weights and
gradients, and the sample's keys must be the full pass's keys, so all of them must round the same
way, bit for bit (and as torch's `w + g * rho`): a product, then a sum, each rounded. Every launch
that calls these helpers takes `enable_fp_fusion=False`, so that no FMA joins the two.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import triton_chunk as ck


@triton.jit
def step_scale(rho, scale_ptr, t, NORM: tl.constexpr):
    """rho of tensor t; with NORM (CrAM's normalised perturbation) times the 1 / ||g|| there."""
    scale = tl.load(rho + t)
    if NORM:
        scale = tl.load(scale_ptr) * scale
    return scale


@triton.jit
def perturbed(w, g, scale):
    """w + scale * g, rounded as torch rounds w + g * scale (no FMA: see the module)."""
    return w + g * scale


@triton.jit
def save_and_perturb(w, grad_ptrs, wsave_ptrs, gsave_ptrs, rho, scale_ptr, t, start, size,
                     PLUS: tl.constexpr, NORM: tl.constexpr, ALIGNED: tl.constexpr,
                     FULL: tl.constexpr, BLOCK: tl.constexpr):
    """The CrAM step's first half on one chunk of tensor t: save w (and g with PLUS), return
    w + rho * g (the caller stores it)."""
    g = ck.load(ck.base(grad_ptrs, t, start, tl.float32, ALIGNED), size, FULL, BLOCK)
    ck.store(ck.base(wsave_ptrs, t, start, tl.float32, ALIGNED), w, size, FULL, BLOCK)
    if PLUS:
        ck.store(ck.base(gsave_ptrs, t, start, tl.float32, ALIGNED), g, size, FULL, BLOCK)
    return perturbed(w, g, step_scale(rho, scale_ptr, t, NORM))
