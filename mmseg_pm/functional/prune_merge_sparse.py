"""Sparse application of Prune-and-Merge structures: ``z = M x``, ``y = R z + (1 - t) x`` and,
between two units in consecutive blocks, both at once without forming ``y``.

J. Mao et al., "Prune and Merge", IEEE TMM 2025 (arXiv 2503.23455): merge matrix M before a
block, reconstruct matrix R after it, token mask t (pruned tokens take the shortcut); official
``pm-vit/tmvit.py`` Block forward. Structures are described in :mod:`.prune_merge` (``assign``,
``merge_weight``, ``restore_weight``); this module only applies them.

Every operation is a weighted gather-sum, ``torch.nn.functional.embedding_bag(mode='sum',
per_sample_weights=...)`` on the contiguous ``(B * L, C)`` view of the tokens: one pass over
the rows it reads, no zero fill, no separate scaling pass; differentiable in the tokens and
the weights. Index tensors are built once per structure and batch size and kept in the
caller's ``cache`` (the caller clears it when the structure changes); outside autograd the
bag weights are kept too, until a weight tensor changes (same object, same version counter).

*Carried rows.* A pruned patch skips its block(s) and gets its input back after them, so only
the pruned rows of the input are needed to restore: ``carried`` is ``(B, n_pruned, C)``, the
input rows of the pruned patches in increasing patch order (:func:`carry_pruned`). With
carried rows, two units in consecutive blocks ``a`` (restore) and ``b`` (merge) compose
(:func:`restore_then_merge`): ``z_b = M_b (R_a z_a + (1 - t_a) x_a)`` and the carried rows of
``b`` come straight from ``z_a`` and the carried rows of ``a``, so the ``(B, P + N, C)`` grid
between the two blocks is never written or read again. At batch 1 that grid (1.5 MB for
Segmenter ViT-S at 512x512) has left the cache by the time the block ends; not writing it is
what keeps merge / reconstruct memory traffic small.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import flat_rows, memoized, restore_tokens


def _starts(sizes: Tensor) -> Tensor:
    return torch.cumsum(sizes, 0) - sizes


def _memo_by_weights(cache: Optional[dict], key, sources: Sequence[Tensor], make):
    """``make()``, kept in ``cache`` outside autograd until one of ``sources`` changes (same
    object, same version counter; the entry holds the objects, so their ids stay theirs).
    While ``torch.compile`` traces, ``make()`` every time (the weights become graph ops)."""
    if cache is None or torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(s.requires_grad for s in sources)):
        return make()
    stamp = [(id(s), s._version) for s in sources]
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[2]
    value = make()
    cache[key] = (stamp, tuple(sources), value)
    return value


def _bag_weights(weight: Tensor, index, num_prefix: int, batch: int, dtype) -> Tensor:
    """``per_sample_weights``: ``P`` ones then ``weight[index]``, repeated for each image."""
    return torch.cat([weight.new_ones(num_prefix), weight[index]]).to(dtype).repeat(batch)


def _pruned_rows(assign: Tensor, num_prefix: int, batch: int) -> Tensor:
    """Flat rows of the pruned patches in the ``(B * (P + N), C)`` view, ``(B * n_pruned,)``."""
    return flat_rows(torch.nonzero(assign < 0).flatten() + num_prefix, batch,
                     num_prefix + assign.numel())


def carry_pruned(x: Tensor, assign: Tensor, num_prefix: int,
                 cache: Optional[dict] = None) -> Tensor:
    """The rows of the pruned patches of ``x``: ``(B, P + N, C) -> (B, n_pruned, C)``, in
    increasing patch order (what :func:`restore_patches` needs instead of the whole input)."""
    b, length, c = x.shape
    rows = memoized(cache, ('pruned', b, x.device), lambda: _pruned_rows(assign, num_prefix, b))
    return x.reshape(b * length, c).index_select(0, rows).view(b, -1, c)


def merge_tokens(x: Tensor, assign: Tensor, merge_weight: Tensor, num_groups: int,
                 num_prefix: int, cache: Optional[dict] = None) -> Tensor:
    """Sparse ``z = M x``: merge ``(B, P + N, C)`` tokens into ``(B, P + K, C)``.

    Prefix tokens are copied; patch ``j`` is added into group ``assign[j]`` with weight
    ``merge_weight[j]``; pruned patches (``assign = -1``) contribute nothing, whatever their
    weight. One ``embedding_bag`` with a bag per output token. While exporting to ONNX a
    weighted ``scatter_add`` (ONNX ScatterElements with ``reduction='add'``, opset 16+).

    Args:
        x (Tensor): ``(B, P + N, C)``.
        assign (Tensor): LongTensor ``(N,)``, -1 for pruned patches.
        merge_weight (Tensor): ``(N,)``.
        num_groups (int): K.
        num_prefix (int): P.
        cache (dict, optional): see the module docstring.

    Returns:
        Tensor: ``(B, P + K, C)`` (contiguous).
    """
    b, length, c = x.shape
    p, k = num_prefix, num_groups
    if torch.onnx.is_in_onnx_export():
        # ONNX: ScatterElements(reduction='add') (opset >= 16); index_add_ with repeated
        # indices has no correct ONNX equivalent
        patches = x[:, p:] * (merge_weight * (assign >= 0)).to(x.dtype)[None, :, None]
        index = assign.clamp(min=0)[None, :, None].expand(b, length - p, c)
        z = x.new_zeros(b, k, c).scatter_add(1, index, patches)
        return torch.cat([x[:, :p], z], dim=1) if p else z

    def bags():
        kept = torch.nonzero(assign >= 0).flatten()
        members = kept[torch.sort(assign[kept], stable=True).indices]
        sizes = torch.cat([torch.ones(p, dtype=torch.long, device=assign.device),
                           torch.bincount(assign[members], minlength=k)])
        rows = torch.cat([torch.arange(p, device=assign.device), members + p])
        return (flat_rows(rows, b, length), flat_rows(_starts(sizes), b, rows.numel()),
                members)
    rows, offsets, members = memoized(cache, ('merge', b, x.device), bags)
    weights = _memo_by_weights(cache, ('merge_weights', b, x.dtype), (merge_weight,),
                               lambda: _bag_weights(merge_weight, members, p, b, x.dtype))
    z = F.embedding_bag(rows, x.reshape(b * length, c), offsets, mode='sum',
                        per_sample_weights=weights)
    return z.view(b, p + k, c)


def restore_patches(z: Tensor, shortcut: Optional[Tensor], assign: Tensor,
                    restore_weight: Tensor, num_prefix: int, prune_mask: Optional[Tensor] = None,
                    cache: Optional[dict] = None, carried: Optional[Tensor] = None) -> Tensor:
    """Sparse ``y = R z + (1 - t) * x``: restore ``(B, P + K, C)`` tokens to ``(B, P + N, C)``.

    Prefix tokens come from ``z``; patch ``j`` gets ``restore_weight[j] * z[P + assign[j]]``;
    pruned patches get their input back unchanged (the paper's shortcut for pruned tokens;
    official ``tmvit.py`` Block forward), whatever their weight. One ``embedding_bag`` with
    one-row bags and a copy of the pruned rows (out of place when autograd records). While
    exporting to ONNX, or when ``z`` and ``shortcut`` differ in dtype (mixed precision),
    :func:`mmseg_pm.functional.common.restore_tokens`.

    Args:
        z (Tensor): ``(B, P + K, C)`` block output in the compressed space.
        shortcut (Tensor | None): ``(B, P + N, C)`` input of the merge (the pruned tokens'
            source), or None with ``carried``.
        assign (Tensor): LongTensor ``(N,)``, -1 for pruned patches.
        restore_weight (Tensor): ``(N,)``.
        num_prefix (int): P.
        prune_mask (Tensor, optional): bool ``(N,)``, ``assign < 0`` (computed if None;
            only the ONNX / mixed-dtype fallback reads it).
        cache (dict, optional): see the module docstring.
        carried (Tensor, optional): ``(B, n_pruned, C)`` the pruned rows of the input
            (:func:`carry_pruned`), instead of ``shortcut``.

    Returns:
        Tensor: ``(B, P + N, C)`` (contiguous; with ``carried`` of another dtype than ``z``,
        the promoted dtype).

    Raises:
        ValueError: neither or both of ``shortcut`` and ``carried``.
    """
    if (shortcut is None) == (carried is None):
        raise ValueError('restore_patches needs exactly one of shortcut and carried')
    if shortcut is not None and (torch.onnx.is_in_onnx_export() or z.dtype != shortcut.dtype):
        if prune_mask is None:
            prune_mask = assign < 0
        return restore_tokens(z, assign, num_prefix, shortcut=shortcut, dropped=prune_mask,
                              weight=torch.where(prune_mask, 0, restore_weight))
    b, pk, c = z.shape
    p, n = num_prefix, assign.numel()

    def bags():
        rows = torch.cat([torch.arange(p, device=assign.device), assign.clamp(min=0) + p])
        return flat_rows(rows, b, pk), torch.arange(b * (p + n), device=assign.device)
    rows, offsets = memoized(cache, ('restore', b, z.device), bags)
    pruned = memoized(cache, ('pruned', b, z.device), lambda: _pruned_rows(assign, p, b))
    weights = _memo_by_weights(cache, ('restore_weights', b, z.dtype), (restore_weight,),
                               lambda: _bag_weights(restore_weight, slice(None), p, b, z.dtype))
    y = F.embedding_bag(rows, z.reshape(b * pk, c), offsets, mode='sum',
                        per_sample_weights=weights)
    if pruned.numel():
        if carried is None:
            kept = shortcut.reshape(b * (p + n), c).index_select(0, pruned)
        else:
            kept = carried.reshape(-1, c)
            y = y.to(torch.promote_types(y.dtype, kept.dtype))  # as y + shortcut * mask would
        kept = kept.to(y.dtype)
        record = torch.is_grad_enabled() and (y.requires_grad or kept.requires_grad)
        y = y.index_copy(0, pruned, kept) if record else y.index_copy_(0, pruned, kept)
    return y.view(b, p + n, c)


def restore_then_merge(z: Tensor, carried: Tensor, first: Tuple[Tensor, Tensor],
                       second: Tuple[Tensor, Tensor, int], num_prefix: int,
                       cache: Optional[dict] = None,
                       joined: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Restore after unit ``a`` and merge before unit ``b`` (the next block) in one step.

    Equals ``y = restore_patches(z, None, ..., carried=carried)`` of ``a`` followed by
    ``merge_tokens(y, ...)`` and ``carry_pruned(y, ...)`` of ``b`` (up to float rounding: the
    weights ``merge_weight_b[j] * restore_weight_a[j]`` are multiplied first), without the
    ``(B, P + N, C)`` grid ``y``: both outputs are one weighted gather (``embedding_bag``)
    from the rows of ``z`` followed by those of ``carried``. The outputs are consecutive views
    of one tensor, returned as well: when the next block writes its output into the merged
    tokens' rows, that tensor is already the next step's ``joined`` input, and the step
    needs no copy (else ``z`` and ``carried`` are concatenated first).

    Args:
        z (Tensor): ``(B, P + K_a, C)`` output of unit ``a``'s last block.
        carried (Tensor): ``(B, n_pruned_a, C)`` carried rows of ``a`` (same dtype as ``z``).
        first (tuple): unit ``a``: ``(assign (N,), restore_weight (N,))``.
        second (tuple): unit ``b``: ``(assign (N,), merge_weight (N,), K_b)``.
        num_prefix (int): P.
        cache (dict, optional): for this pair of structures (see the module docstring).
        joined (Tensor, optional): ``(B * (P + K_a) + B * n_pruned_a, C)``, the rows of ``z``
            then of ``carried`` in one tensor (whose views ``z`` and ``carried`` are).

    Returns:
        tuple[Tensor, Tensor, Tensor]: merged tokens ``(B, P + K_b, C)``, the carried rows of
        ``b`` ``(B, n_pruned_b, C)``, and the ``(B * (P + K_b) + B * n_pruned_b, C)`` tensor
        both are views of.
    """
    (assign_a, restore_a), (assign_b, merge_b, k_b) = first, second
    b, pk_a, c = z.shape
    p = num_prefix

    def make():
        plan = memoized(cache, ('plan', b, z.device),
                        lambda: _chain_plan(assign_a, assign_b, k_b, p, b, pk_a))
        return plan['rows'], plan['offsets'], _chain_weights(plan, restore_a, merge_b, p, b,
                                                             z.dtype)
    # one lookup per call: indices and weights together, weights rebuilt when one changes
    rows, offsets, weights = _memo_by_weights(cache, (b, z.device, z.dtype),
                                              (restore_a, merge_b), make)
    if joined is None:
        joined = torch.cat([z.reshape(b * pk_a, c), carried.reshape(-1, c)])
    out = F.embedding_bag(rows, joined, offsets, mode='sum', per_sample_weights=weights)
    merged = b * (p + k_b)  # the merged tokens' rows first, then the carried rows
    return out[:merged].view(b, p + k_b, c), out[merged:].view(b, -1, c), out


def _chain_plan(assign_a: Tensor, assign_b: Tensor, k_b: int, p: int, b: int,
                pk_a: int) -> dict:
    """Index tensors of :func:`restore_then_merge` for batch ``b``: rows of the table
    ``[z (b * (P + K_a) rows); carried (b * n_pruned_a rows)]`` and bag offsets."""
    dev = assign_a.device
    pruned_a = torch.nonzero(assign_a < 0).flatten()
    n_a = pruned_a.numel()
    # per patch j: its row of y_a in the table, for image 0 and the offset of image i
    row = torch.where(assign_a >= 0, assign_a + p, 0)
    row[pruned_a] = b * pk_a + torch.arange(n_a, device=dev)
    step = torch.where(assign_a >= 0, pk_a, n_a)

    def rows_of(patches, prefix_rows):
        first = torch.cat([prefix_rows, row[patches]])
        steps = torch.cat([torch.full_like(prefix_rows, pk_a), step[patches]])
        return (torch.arange(b, device=dev)[:, None] * steps + first).reshape(-1)
    prefix = torch.arange(p, device=dev)
    kept_b = torch.nonzero(assign_b >= 0).flatten()
    members = kept_b[torch.sort(assign_b[kept_b], stable=True).indices]  # by group of b
    sizes = torch.cat([torch.ones(p, dtype=torch.long, device=dev),
                       torch.bincount(assign_b[members], minlength=k_b)])
    pruned_b = torch.nonzero(assign_b < 0).flatten()
    merge_rows, carry_rows = rows_of(members, prefix), rows_of(pruned_b, prefix[:0])
    offsets = torch.cat([flat_rows(_starts(sizes), b, p + members.numel()),
                         merge_rows.numel() + torch.arange(carry_rows.numel(), device=dev)])
    return dict(members=members, pruned_b=pruned_b, carried_a=assign_a < 0,
                rows=torch.cat([merge_rows, carry_rows]), offsets=offsets)


def _chain_weights(plan: dict, restore_a: Tensor, merge_b: Tensor, p: int, b: int, dtype):
    """Bag weights of :func:`restore_then_merge`: per patch ``j`` the factor ``f_j`` that gives
    ``y_a[j]`` from its table row (``restore_weight_a[j]``, or 1 for a carried row); then
    ``merge_weight_b[j] * f_j`` for the merge bags and ``f_j`` for the carried rows of ``b``."""
    factor = torch.where(plan['carried_a'], restore_a.new_ones(()), restore_a)
    members, pruned_b = plan['members'], plan['pruned_b']
    merge_w = torch.cat([merge_b.new_ones(p), merge_b[members] * factor[members]])
    return torch.cat([merge_w.to(dtype).repeat(b), factor[pruned_b].to(dtype).repeat(b)])


__all__ = ['carry_pruned', 'merge_tokens', 'restore_patches',
           'restore_then_merge']
