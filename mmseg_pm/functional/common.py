"""Helpers shared by the token-reduction methods: the reduction record, restoring, patch grids."""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor


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
    value before the step. This is Prune-and-Merge's ``y = R z + (1 - t) x`` with R's support
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
        shortcut (Tensor, optional): ``(B, P + n, C)`` input of the step; needed when a patch
            is dropped.
        dropped (Tensor, optional): bool ``(n,)`` or ``(B, n)``, ``index < 0``; computed when
            None (then a host sync checks whether anything is dropped).

    Returns:
        Tensor: ``(B, P + n, C)`` (contiguous).

    Raises:
        ValueError: a dropped patch without ``shortcut``.
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
        raise ValueError('restore_tokens: dropped tokens need the shortcut (the step input)')
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


def patch_grid(size: Sequence[int], patch_size: int) -> Tuple[int, int]:
    """Patch grid ``(ceil(H / patch), ceil(W / patch))`` of an input size ``(H, W)`` in pixels
    (mmseg's ``PatchEmbed`` pads the bottom / right edge to whole patches)."""
    h, w = (int(v) for v in size)
    return -(-h // patch_size), -(-w // patch_size)
