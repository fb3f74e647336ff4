"""Helpers shared by the token-reduction methods: the reduction record, restoring, patch grids."""
import math
from decimal import Decimal
from numbers import Integral, Real
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError, StructureError


class Reduction(NamedTuple):
    """The result of one token-reduction step on ``(B, P + n, C)`` tokens.

    Attributes:
        x (Tensor): ``(B, P + K, C)`` reduced tokens, prefix first. Methods whose count depends
            on the image pad every image to the batch's largest ``K`` with zero rows of size 0.
        size (Tensor | None): ``(B, P + K)`` float, the number of original patches each token
            stands for (prefix tokens 1, padding 0); None for methods that track no sizes.
        index (Tensor): LongTensor ``(B, n)``: for each input patch token ``j``, the reduced
            patch token ``k`` in ``[0, K)`` that carries it, or ``-1`` when it was dropped (its
            value is restored from the step's input).
    """
    x: Tensor
    size: Optional[Tensor]
    index: Tensor


def flat_rows(index: Tensor, batch: int, length: int) -> Tensor:
    """Row indices into the ``(batch * length, C)`` view of a contiguous ``(batch, length, C)``.

    Args:
        index (Tensor): LongTensor ``(L,)`` rows shared by every image, or ``(batch, L)``.
        batch (int): B.
        length (int): rows per image.

    Returns:
        Tensor: LongTensor ``(batch * L,)``.
    """
    offsets = torch.arange(batch, device=index.device) * length
    if index.dim() == 1:
        index = index[None, :]
    return (offsets[:, None] + index).reshape(-1)


def restore_tokens(z: Tensor, index: Tensor, num_prefix: int, weight: Optional[Tensor] = None,
                   shortcut: Optional[Tensor] = None, dropped: Optional[Tensor] = None) -> Tensor:
    """Undo one reduction step: ``(B, P + K, C)`` reduced tokens -> ``(B, P + n, C)``.

    ``y[:, :P] = z[:, :P]``; patch ``j`` gets ``weight[j] * z[:, P + index[j]]`` (a copy when
    ``weight`` is None); a dropped patch (``index[j] = -1``) gets ``shortcut[:, P + j]``, its
    value before the step (a zero row when ``shortcut`` is None: padding rows of per-image
    token counts carry no patch). This is Prune-and-Merge's ``y = R z + (1 - t) x`` with R's support
    ``weight`` (Mao et al., IEEE TMM 2025, arXiv 2503.23455, the reconstruct matrix R and token
    mask t) and ToMe's unmerge by copying (Bolya et al., ICLR 2023, arXiv 2210.09461).

    Cost: one gather of ``B * (P + n)`` rows of ``C`` values, one in-place scaling when
    ``weight`` is given, and a copy of the dropped rows. When autograd records (grad enabled
    and an input requires grad) or while exporting to ONNX the scaling and the shortcut are
    applied out of place.

    Args:
        z (Tensor): ``(B, P + K, C)``.
        index (Tensor): LongTensor ``(n,)`` shared by the batch or ``(B, n)`` per image.
        num_prefix (int): P.
        weight (Tensor, optional): ``(n,)`` per-patch factor, zero where dropped.
        shortcut (Tensor, optional): ``(B, P + n, C)`` input of the step, the value of dropped
            patches (zeros when None).
        dropped (Tensor, optional): bool ``(n,)`` or ``(B, n)``, ``index < 0``; computed when
            None (then a host sync checks whether anything is dropped).

    Returns:
        Tensor: ``(B, P + n, C)`` (contiguous).

    """
    b, pk, c = z.shape
    p, n = num_prefix, index.shape[-1]
    rows = index.clamp(min=0) + p
    prefix = torch.arange(p, device=rows.device)
    rows = torch.cat([prefix.expand(*rows.shape[:-1], p), rows], dim=-1)
    y = z.reshape(b * pk, c).index_select(0, flat_rows(rows, b, pk)).view(b, p + n, c)
    if dropped is None:
        dropped = index < 0
        if not bool(dropped.any()):
            dropped = None
    if dropped is not None and shortcut is None:
        shortcut = z.new_zeros(b, p + n, c)
    if weight is not None:
        weight = torch.cat([weight.new_ones(p), weight]).to(z.dtype)[None, :, None]
    record = torch.is_grad_enabled() and (z.requires_grad or (
        shortcut is not None and shortcut.requires_grad) or (
        weight is not None and weight.requires_grad))
    if record or torch.onnx.is_in_onnx_export():  # out of place (autograd, ONNX graphs)
        if weight is not None:
            y = y * weight
        if dropped is not None:
            mask = torch.cat([dropped.new_zeros(*dropped.shape[:-1], p), dropped], dim=-1)
            mask = mask.to(z.dtype).reshape(-1 if mask.dim() == 2 else 1, p + n, 1)
            y = y * (1 - mask) + shortcut * mask if weight is None else y + shortcut * mask
        return y
    if weight is not None:
        y.mul_(weight)
    if dropped is not None:
        # same result dtype as ``y + shortcut * mask`` (mixed precision)
        y = y.to(torch.promote_types(y.dtype, shortcut.dtype))
        full = torch.cat([dropped.new_zeros(*dropped.shape[:-1], p), dropped], dim=-1)
        if y.is_cuda or full.dim() == 2:  # no host sync / per-image rows
            y = torch.where(full.reshape(-1 if full.dim() == 2 else 1, p + n, 1),
                            shortcut.to(y.dtype), y)
        else:  # CPU, shared rows: copy the dropped rows only
            pos = flat_rows(torch.nonzero(full).flatten(), b, p + n)
            y.view(b * (p + n), c).index_copy_(
                0, pos, shortcut.reshape(b * (p + n), c).index_select(0, pos).to(y.dtype))
    return y


def compose_index(outer: Tensor, inner: Tensor) -> Tensor:
    """Chain two steps' patch maps: ``out[..., j] = inner[..., outer[..., j]]`` (``-1`` kept).

    Args:
        outer (Tensor): LongTensor ``(n0,)`` or ``(B, n0)``: slot after step 1 of each patch.
        inner (Tensor): LongTensor ``(n1,)`` or ``(B, n1)``: slot after step 2 of each step-1
            token.

    Returns:
        Tensor: LongTensor ``(n0,)`` when both are shared, else ``(B, n0)``.
    """
    if outer.dim() == 1 and inner.dim() == 1:
        out = inner[outer.clamp(min=0)]
    else:
        b = max(t.shape[0] for t in (outer, inner) if t.dim() == 2)
        outer, inner = outer.expand(b, -1), inner.expand(b, -1)
        out = torch.gather(inner, 1, outer.clamp(min=0))
    return torch.where(outer < 0, -1, out)


def memoized(cache: Optional[dict], key, make):
    """``cache[key]``, made by ``make()`` on first use (no caching when ``cache`` is None)."""
    if cache is None:
        return make()
    value = cache.get(key)
    if value is None:
        value = cache[key] = make()
    return value


def sort_indices(x: Tensor, dim: int = -1, descending: bool = False) -> Tensor:
    """Indices that sort ``x`` along ``dim``; ties keep their order (lower position first).

    ``torch.sort(stable=True)`` normally; while exporting to ONNX (which has no stable sort)
    a full ``torch.topk``, whose ONNX TopK puts equal elements in index order as well.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(x, x.shape[dim], dim=dim, largest=descending, sorted=True).indices
    return torch.sort(x, dim=dim, descending=descending, stable=True).indices


def patch_grid(size: Sequence[int], patch_size: int) -> Tuple[int, int]:
    """Patch grid ``(ceil(H / patch), ceil(W / patch))`` of an input size ``(H, W)`` in pixels
    (mmseg's ``PatchEmbed`` pads the bottom / right edge to whole patches)."""
    h, w = (int(v) for v in size)
    return -(-h // patch_size), -(-w // patch_size)


# --------------------------------------------------------------------------------------------
# helpers of the peer methods (ToMe, EViT, ALGM, MSTM)
# --------------------------------------------------------------------------------------------


def check_tokens(x: Tensor, num_prefix: int, size: Optional[Tensor] = None) -> int:
    """Check ``(B, P + n, C)`` tokens (and ``(B, P + n)`` sizes) and return ``n``.

    Raises:
        ConfigError: ``num_prefix`` is not a non-negative int.
        StructureError: ``x`` is not 3-d, has fewer than ``P`` rows, or ``size`` has another
            shape than ``x.shape[:2]``.
    """
    if not isinstance(num_prefix, Integral) or isinstance(num_prefix, bool) or num_prefix < 0:
        raise ConfigError(f'num_prefix must be a non-negative int, got {num_prefix!r}')
    if x.dim() != 3:
        raise StructureError(f'tokens must be (B, P + n, C), got shape {tuple(x.shape)}')
    if x.shape[1] < num_prefix:
        raise StructureError(f'{x.shape[1]} tokens cannot hold {num_prefix} prefix tokens')
    if size is not None and tuple(size.shape) != tuple(x.shape[:2]):
        raise StructureError(f'size must be (B, P + n) = {tuple(x.shape[:2])}, '
                             f'got {tuple(size.shape)}')
    return int(x.shape[1]) - int(num_prefix)


def ones_size(x: Tensor) -> Tensor:
    """``(B, L)`` sizes of all ones for ``(B, L, C)`` tokens (float32, or float64 for float64
    tokens: half precision cannot count patches exactly)."""
    dtype = torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32
    return torch.ones(x.shape[:2], dtype=dtype, device=x.device)


def identity_reduction(x: Tensor, size: Optional[Tensor], num_prefix: int) -> Reduction:
    """The reduction that changes nothing: ``x`` and ``size`` as given, ``index[j] = j``.

    Padding rows of the input (size 0) get ``-1``: they carry no patch, and restoring them from
    the shortcut gives back the zero row.
    """
    b, length = x.shape[:2]
    n = length - num_prefix
    index = torch.arange(n, device=x.device).expand(b, n).clone()
    if size is not None:
        index = index.masked_fill(size[:, num_prefix:] <= 0, -1)
    return Reduction(x, size, index)


def keep_count(n: int, rate: float, name: str = 'keep_rate') -> int:
    """``ceil(rate * n)``, the kept-token count of EViT and MSTM.

    ``rate`` is read as the decimal it prints as (``Decimal(repr(rate))``), so that e.g.
    ``0.07 * 100`` gives 7 and not the 8 of the binary product ``7.000000000000001``.

    Raises:
        ConfigError: ``rate`` not a finite real in ``(0, 1]``, or ``n`` negative.
    """
    if (not isinstance(rate, Real) or isinstance(rate, bool) or not math.isfinite(rate)
            or not 0 < rate <= 1):
        raise ConfigError(f'{name} must be a finite number in (0, 1], got {rate!r}')
    if not isinstance(n, Integral) or n < 0:
        raise ConfigError(f'token count must be a non-negative int, got {n!r}')
    return int(math.ceil(Decimal(repr(float(rate))) * int(n)))


def merge_into_slots(x: Tensor, slot: Tensor, num_slots: int, weight: Optional[Tensor] = None,
                     size: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """Gather or average the rows of ``x`` into ``num_slots`` output rows.

    Row ``i`` of image ``b`` goes to output row ``slot[b, i]`` (``-1``: the row is not used,
    e.g. padding or a dropped token). An output row with one member is an exact copy of it; an
    output row with several members is their weighted average ``sum(w x) / sum(w)`` (the
    size-weighted average of ToMe when ``weight`` is the sizes; a plain mean where a group's
    weights sum to 0); an output row with no member is a zero row (padding). Gradients reach
    ``x`` (and ``weight``); ``slot`` is an index.

    Args:
        x (Tensor): ``(B, L, C)``.
        slot (Tensor): LongTensor ``(B, L)`` in ``[-1, num_slots)``.
        num_slots (int): number of output rows.
        weight (Tensor, optional): ``(B, L)`` non-negative averaging weights (default: ones).
        size (Tensor, optional): ``(B, L)`` sizes, summed per output row.

    Returns:
        tuple: ``(B, num_slots, C)`` merged rows and ``(B, num_slots)`` summed sizes (None when
        ``size`` is None).
    """
    b, length, c = x.shape
    unused = slot < 0
    slot = torch.where(unused, num_slots, slot)  # one extra row collects the unused rows
    m = num_slots + 1
    count = torch.zeros(b, m, dtype=torch.long, device=x.device).scatter_add(
        1, slot, torch.ones_like(slot))[:, :num_slots]
    positions = torch.arange(length, device=x.device).expand(b, length)
    if torch.onnx.is_in_onnx_export():
        # torch's scatter_reduce symbolic wraps ScatterElements in If branches of different
        # ranks (for 0-d inputs), which onnxruntime's shape inference refuses: compare instead
        hit = slot[:, None, :] == torch.arange(m, device=x.device)[None, :, None]
        first = torch.where(hit, positions[:, None, :], length).amin(-1)[:, :num_slots]
    else:
        first = torch.full((b, m), length, dtype=torch.long, device=x.device).scatter_reduce(
            1, slot, positions, 'amin')[:, :num_slots]
    copy = x.gather(1, first.clamp(max=max(length - 1, 0))[..., None].expand(b, num_slots, c))
    multi = count > 1
    out = copy
    if bool(multi.any()):
        wd = torch.promote_types(x.dtype, torch.float32)
        w = torch.ones(b, length, dtype=wd, device=x.device) if weight is None else weight.to(wd)
        w = torch.where(unused, 0, w)
        xs = x.to(wd)
        rows = slot[..., None].expand(b, length, c)
        num = torch.zeros(b, m, c, dtype=wd, device=x.device).scatter_add(
            1, rows, xs * w[..., None])[:, :num_slots]
        den = torch.zeros(b, m, dtype=wd, device=x.device).scatter_add(1, slot, w)[:, :num_slots]
        flat = multi & (den <= 0)
        if bool(flat.any()):  # weights summing to 0: plain mean of the group
            num = torch.where(flat[..., None], torch.zeros(b, m, c, dtype=wd, device=x.device)
                              .scatter_add(1, rows, xs)[:, :num_slots], num)
            den = torch.where(flat, count.to(wd), den)
        avg = num / torch.where(multi, den, 1)[..., None]
        out = torch.where(multi[..., None], avg.to(x.dtype), copy)
    out = out.masked_fill((count == 0)[..., None], 0)
    new_size = None
    if size is not None:
        new_size = torch.zeros(b, m, dtype=size.dtype, device=size.device).scatter_add(
            1, slot, size)[:, :num_slots]
    return out, new_size


def slots_to_index(slot: Tensor, num_prefix: int) -> Tensor:
    """``(B, P + n)`` output rows of every input row -> the ``(B, n)`` patch ``index`` of a
    :class:`Reduction` (``-1`` kept)."""
    patch = slot[:, num_prefix:]
    return torch.where(patch < 0, -1, patch - num_prefix)
