"""The one mask implementation: magnitude (global / uniform) and N:M selection.

Every caller -- the CrAM and N:M optimizer steps, one-shot pruning, the kernels -- selects weights
through the functions here. Masks are bool tensors shaped (and laid out) like the weights; True
means "kept".

Magnitude selection is an exact radix select on the bit patterns of |w|: for IEEE floats with the
sign bit cleared, the bit pattern read as an integer orders like the magnitude. Histograms of the top
digits narrow the k-th smallest key down without sorting and without concatenating the weights, so
the cost is a few linear passes whatever the sparsity. The passes run in torch (any device, any
float dtype), in fused numba kernels for dense float32/float64 CPU tensors, or in Triton kernels
without host synchronisation for dense float32 CUDA tensors (`ffcv_cram.kernels`). `kernels=None`
picks the fastest available; False forces the torch path; True requires Triton (on the CPU only in
its interpreter, TRITON_INTERPRET=1: how the tests compare the paths).

Tie rule (identical on every call, rank, backend and memory format): when several weights share the
threshold magnitude, the ones with the lowest index are pruned first, where the index runs over the
tensors in the order given and, inside a tensor, over its elements in logical (row-major) order.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from .. import kernels
from ..prune_groups import nm_groupable, prune_count, selection_groups  # (also this module's API)

_KEY_DTYPE = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
_DIGIT_BITS = 16


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module, nn.Parameter]]:
    """Weights of every Conv and Linear layer, in module order: (name, module, weight)."""
    found, seen = [], set()
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            weight = module.weight
            if isinstance(weight, nn.Parameter) and id(weight) not in seen:
                seen.add(id(weight))
                name = f"{module_name}.weight" if module_name else "weight"
                found.append((name, module, weight))
    return found


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
            or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{name}={sparsity!r}: must be a number in [0, 1)")
    return float(sparsity)


def check_nm(n: int, m: int) -> tuple[int, int]:
    if int(m) != m or m < 1:
        raise ValueError(f"N:M pattern {n}:{m}: M must be an integer >= 1")
    if int(n) != n or not 0 <= n <= m:
        raise ValueError(f"N:M pattern {n}:{m}: N must be an integer with 0 <= N <= M")
    return int(n), int(m)


def parse_pattern(pattern) -> tuple[int, int]:
    """(N, M) from a pair or an 'N:M' string."""
    if isinstance(pattern, str):
        try:
            n, m = (int(x) for x in pattern.split(":"))
        except ValueError:
            raise ValueError(f"pattern {pattern!r}: expected 'N:M', e.g. '2:4'") from None
        return check_nm(n, m)
    n, m = pattern
    return check_nm(n, m)


def magnitude_keys(t: torch.Tensor) -> torch.Tensor:
    """Integer keys ordered like |t| (the bit pattern of |t|; -0.0 and +0.0 share key 0)."""
    if t.dtype not in _KEY_DTYPE:
        raise TypeError(f"magnitude selection needs a floating tensor, got {t.dtype}")
    return t.abs().view(_KEY_DTYPE[t.dtype])


def _key_bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits - 1  # the sign bit of |w| is always clear


def _flat_view(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of t in memory order if t is dense (e.g. contiguous or channels_last), else None."""
    if t.is_contiguous():
        return t.view(-1)
    dims = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    permuted = t.permute(dims)
    return permuted.view(-1) if permuted.is_contiguous() else None


def _flat(t: torch.Tensor) -> torch.Tensor:
    """t as 1-D, in memory order where that is free; for histograms, where order is irrelevant."""
    view = _flat_view(t)
    return view if view is not None else t.reshape(-1)


# -- backends: a digit histogram restricted to a key prefix, and the final threshold pass ------------
class _TorchPasses:
    """Torch ops, any device and dtype. After the first digit the (few) keys sharing the prefix are
    compacted once, and later digits are histogrammed from that short list."""

    def __init__(self, tensors):
        self.tensors, self.bits = tensors, _key_bits(tensors[0].dtype)
        self.candidates = None

    @staticmethod
    def _bincount(digits, width):
        digits = _flat(digits)  # bincount wants 1-D; int16 keys (half types) are widened first
        return torch.bincount(digits.int() if digits.dtype == torch.int16 else digits,
                              minlength=1 << width)

    def histogram(self, prefix_shift, prefix, shift, width):
        mask = (1 << width) - 1
        if prefix_shift == self.bits:  # first digit: every key, one tensor at a time
            return sum(self._bincount(magnitude_keys(t) >> shift, width)
                       for t in self.tensors).cpu()
        if self.candidates is None:
            self.candidates = torch.cat([_with_prefix(magnitude_keys(t), prefix_shift, prefix)
                                         for t in self.tensors])
        else:
            self.candidates = _with_prefix(self.candidates, prefix_shift, prefix)
        return self._bincount((self.candidates >> shift) & mask, width).cpu()

    def keep_above(self, threshold, outs, zero_pruned):
        for t, out in zip(self.tensors, outs):
            torch.gt(magnitude_keys(t), threshold, out=out)
            if zero_pruned:
                t.mul_(out.view(torch.uint8))


def _with_prefix(keys, shift, prefix):
    return keys[(keys >> shift) == prefix]


class _NumbaPasses:
    """Fused numba sweeps over dense float32/float64 CPU tensors (`ffcv_cram.kernels`)."""

    def __init__(self, tensors):
        from ..kernels.cpu_select import Plan
        self.bits = _key_bits(tensors[0].dtype)
        key_dtype = _KEY_DTYPE[tensors[0].dtype]
        self.plan = Plan([_flat(t).view(key_dtype).numpy() for t in tensors])

    @staticmethod
    def usable(tensors, outs) -> bool:
        return (tensors[0].device.type == "cpu"
                and tensors[0].dtype in (torch.float32, torch.float64)
                and all(_flat_view(t) is not None for t in tensors)
                and all(o.stride() == t.stride() for o, t in zip(outs, tensors))
                and kernels.cpu_kernels_usable())

    def histogram(self, prefix_shift, prefix, shift, width):
        return torch.from_numpy(self.plan.histogram(prefix_shift, prefix, shift, width))

    def keep_above(self, threshold, outs, zero_pruned):
        self.plan.keep_above(threshold, [_flat(o).numpy() for o in outs], zero_pruned)


def _kth_smallest_key(passes, k: int) -> tuple[int, int, int]:
    """Exact radix select: (key T of the k-th smallest |w| (1-based), ties to prune, ties in total).

    `ties to prune` = k - #(keys < T), between 1 and `ties in total` = #(keys == T).
    """
    bits = passes.bits
    prefix, known, rank = 0, 0, k
    while known < bits:
        width = (bits - known) % _DIGIT_BITS or _DIGIT_BITS
        shift = bits - known - width
        hist = passes.histogram(bits - known, prefix, shift, width)
        cumulative = hist.cumsum(0)
        digit = int((cumulative < rank).sum())
        if digit > 0:
            rank -= int(cumulative[digit - 1])
        ties_total = int(hist[digit])
        prefix = (prefix << width) | digit
        known += width
    return prefix, rank, ties_total


def _select(tensors: Sequence[torch.Tensor], k: int, outs: list[torch.Tensor],
            zero_pruned: bool, numba: bool = True) -> list[torch.Tensor]:
    """Masks pruning exactly the k smallest magnitudes across `tensors` (tie rule in module doc);
    with `zero_pruned` the pruned weights are also set to zero in place."""
    if k <= 0 or k >= sum(t.numel() for t in tensors):
        for t, out in zip(tensors, outs):
            out.fill_(k <= 0)
            if zero_pruned and k > 0:
                t.mul_(0)
        return outs
    passes = (_NumbaPasses(tensors) if numba and _NumbaPasses.usable(tensors, outs)
              else _TorchPasses(tensors))
    threshold, ties_to_prune, ties_total = _kth_smallest_key(passes, k)
    all_ties_go = ties_to_prune == ties_total  # the usual case: every weight at the threshold goes
    passes.keep_above(threshold, outs, zero_pruned and all_ties_go)
    if all_ties_go:
        return outs
    remaining = ties_to_prune
    for t, out in zip(tensors, outs):
        ties = magnitude_keys(t) == threshold
        if remaining == 0:  # quota used up: every later tie is kept
            out |= ties
        else:
            count = int(ties.sum())
            if remaining < count:  # keep the ties after the first `remaining`, in logical order
                flat_ties = ties.reshape(-1)
                out |= (flat_ties & (flat_ties.cumsum(0) > remaining)).view(t.shape)
            remaining -= min(remaining, count)
        if zero_pruned:
            t.mul_(out.view(torch.uint8))
    return outs


def _check_tensors(tensors: Sequence[torch.Tensor]) -> None:
    dtypes = {t.dtype for t in tensors}
    devices = {t.device for t in tensors}
    if len(dtypes) > 1 or len(devices) > 1:
        raise ValueError(
            f"magnitude_masks: all tensors must share one dtype and device, got {dtypes} on {devices}")


def _masks_out(tensors, out):
    if out is None:
        return [torch.empty_like(t, dtype=torch.bool) for t in tensors]
    if len(out) != len(tensors) or any(o.shape != t.shape or o.dtype != torch.bool
                                       for o, t in zip(out, tensors)):
        raise ValueError("out: needs one bool tensor shaped like each input tensor")
    return list(out)


def _use_triton(tensors, outs, kernels: bool | None) -> bool:
    """Whether the Triton path applies (see module doc); kernels=True and it cannot: an error."""
    if kernels is False or not tensors:
        return False
    from ..kernels import triton_layout as layout
    usable = (layout.kernels_usable(tensors[0].device, explicit=kernels is True)
              and layout.tensors_fit(tensors)
              and all(layout.same_layout(o, t) for o, t in zip(outs, tensors)))
    if kernels is True and not usable:
        raise ValueError("kernels=True: the Triton kernels need dense float32 tensors with at most "
                         "4 dims on one CUDA device (on the CPU: TRITON_INTERPRET=1), "
                         "FFCV_CRAM_KERNELS not 0, and masks laid out like the tensors")
    return usable


@torch.no_grad()
def magnitude_masks(tensors: Iterable[torch.Tensor], sparsity: float, scope: str = "global",
                    out: Sequence[torch.Tensor] | None = None,
                    kernels: bool | None = None) -> list[torch.Tensor]:
    """Bool masks keeping the largest magnitudes (written into `out` when given).

    scope='global': one threshold over all tensors together, pruning round(sparsity * n_total).
    scope='uniform': each tensor pruned to the same sparsity, round(sparsity * n_tensor) each.
    """
    return _magnitude(tensors, sparsity, scope, out, False, kernels)


@torch.no_grad()
def compress_(tensors: Iterable[torch.Tensor], sparsity: float, scope: str = "global",
              out: Sequence[torch.Tensor] | None = None,
              kernels: bool | None = None) -> list[torch.Tensor]:
    """`magnitude_masks`, and zero the pruned weights in place (fused into the mask pass)."""
    return _magnitude(tensors, sparsity, scope, out, True, kernels)


def _magnitude(tensors, sparsity, scope, out, zero_pruned, kernels):
    tensors = [t.detach() for t in tensors]
    sparsity = check_sparsity(sparsity)
    if scope not in ("global", "uniform"):
        raise ValueError(f"scope={scope!r}: must be 'global' or 'uniform'")
    outs = _masks_out(tensors, out)
    if not tensors:
        return []
    if scope == "global":
        _check_tensors(tensors)
    if _use_triton(tensors, outs, kernels):
        from ..kernels.triton_select import select
        select(tensors, *selection_groups(tensors, sparsity, scope), outs, zero_pruned)
        return outs
    numba = kernels is not False
    if scope == "uniform":
        return [_select([t], prune_count(t.numel(), sparsity), [o], zero_pruned, numba)[0]
                for t, o in zip(tensors, outs)]
    return _select(tensors, prune_count(sum(t.numel() for t in tensors), sparsity), outs,
                   zero_pruned, numba)


def nm_groups(t: torch.Tensor, m: int) -> torch.Tensor | None:
    """t as rows of M consecutive elements in (out, kh, kw, in) order, or None if it cannot be grouped.

    For a conv weight (out, in, kh, kw) the input channels are moved last, so with in % M == 0 a
    group is M consecutive input channels at a fixed (out, kh, kw); a Linear row splits into runs of M
    input features. For channels_last weights this is a view (no copy).
    """
    if not nm_groupable(t, m):
        return None
    ordered = t.movedim(1, -1) if t.dim() > 2 else t
    return ordered.reshape(-1, m)


@torch.no_grad()
def nm_masks(tensors: Iterable[torch.Tensor], n: int, m: int,
             kernels: bool | None = None) -> list[torch.Tensor | None]:
    """N:M masks: in every group of M (see `nm_groups`) the M - N smallest magnitudes are pruned.

    Ties inside a group: the lower position is pruned first. Tensors that cannot be grouped
    (fewer than 2 dims, or a size not divisible by M) get None: the caller leaves them dense.
    `kernels` as for `magnitude_masks`.
    """
    n, m = check_nm(n, m)
    tensors = [t.detach() for t in tensors]
    groupable = [t for t in tensors if nm_groupable(t, m)]
    masks = [torch.empty_like(t, dtype=torch.bool) if nm_groupable(t, m) else None
             for t in tensors]
    if _use_triton(groupable, groupable, kernels):
        from ..kernels.triton_nm import nm_select
        nm_select(groupable, [mask for mask in masks if mask is not None], n, m, zero=False)
        return masks
    return [None if mask is None else _nm_mask_torch(t, n, m, mask)
            for t, mask in zip(tensors, masks)]


def _nm_mask_torch(t, n, m, mask):
    keys = magnitude_keys(nm_groups(t, m))
    # rank of each element in its group: smaller keys, then equal keys at lower positions
    rank = torch.zeros(keys.shape, dtype=torch.int16, device=t.device)
    position = torch.arange(m, device=t.device)
    for j in range(m):
        other = keys[:, j:j + 1]
        rank += (other < keys) | ((other == keys) & (position > j))
    keep = rank >= (m - n)
    shaped = keep.view(t.movedim(1, -1).shape).movedim(-1, 1) if t.dim() > 2 else keep.view(t.shape)
    mask.copy_(shaped)
    return mask

