"""Prune-and-Merge's dense matrices: M, R and t from a structure, and a structure from them.

The official code (NUST-Machine-Intelligence-Laboratory/prune_and_merge ``pm-vit/tmvit.py``;
wafev/PM-Segmenter ``segm/model/blocks.py``) stores and trains the merge matrix M
``(P + K, P + N)``, the reconstruct matrix R ``(P + N, P + K)`` and the token mask t
``(P + N,)`` densely; mmseg_pm's ``representation='dense'`` does too, and official checkpoints
convert through :func:`structure_from_dense`. Conventions: :mod:`mmseg_pm.functional.prune_merge`.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import StructureError
from .prune_merge import PMStructure, validate_structure


def to_dense_merge(s: PMStructure, num_prefix: int) -> Tensor:
    """Dense merge matrix M, shape ``(P + K, P + N)``; prefix block is the identity."""
    p, n, k = num_prefix, s.num_tokens, s.num_groups
    m = torch.zeros(p + k, p + n, dtype=s.merge_weight.dtype, device=s.merge_weight.device)
    m[torch.arange(p), torch.arange(p)] = 1
    kept = torch.nonzero(s.assign >= 0).flatten()
    m[p + s.assign[kept], p + kept] = s.merge_weight[kept]
    return m


def to_dense_restore(s: PMStructure, num_prefix: int) -> Tensor:
    """Dense reconstruct matrix R, shape ``(P + N, P + K)``; prefix block is the identity."""
    p, n, k = num_prefix, s.num_tokens, s.num_groups
    r = torch.zeros(p + n, p + k, dtype=s.restore_weight.dtype, device=s.restore_weight.device)
    r[torch.arange(p), torch.arange(p)] = 1
    kept = torch.nonzero(s.assign >= 0).flatten()
    r[p + kept, p + s.assign[kept]] = s.restore_weight[kept]
    return r


def to_token_mask(s: PMStructure, num_prefix: int) -> Tensor:
    """Token mask t, float ``(P + N,)``: 1 for prefix and non-pruned patches, 0 for pruned."""
    prefix = torch.ones(num_prefix, device=s.assign.device)
    return torch.cat([prefix, (s.assign >= 0).float()])


def merge_tokens_dense(x: Tensor, merge_matrix: Tensor) -> Tensor:
    """Dense ``z = M x`` on the token dim: ``(P+K, P+N) @ (B, P+N, C) -> (B, P+K, C)``."""
    return torch.matmul(merge_matrix.to(x.dtype), x)


def restore_tokens_dense(z: Tensor, shortcut: Tensor, restore_matrix: Tensor,
                         token_mask: Tensor) -> Tensor:
    """Dense ``y = R z + (1 - t) * x``: ``(B, P+K, C) -> (B, P+N, C)`` (as the official code
    applies R and the pruned-token shortcut with ``tensordot``)."""
    return (torch.matmul(restore_matrix.to(z.dtype), z)
            + shortcut * (1 - token_mask.to(z.dtype))[None, :, None])


def structure_from_dense(merge_matrix: Tensor, restore_matrix: Tensor,
                         token_mask: Optional[Tensor] = None,
                         grid_size: Optional[Sequence[int]] = None, num_prefix: int = 1,
                         where: str = 'Prune-and-Merge unit'
                         ) -> Tuple[PMStructure, Tensor, Tensor, List[str]]:
    """Derive the structure (groups, centers, pruned set) from dense M, R and t.

    The official matrices may have drifted during finetuning (they are trained densely with
    weight decay in the official classification finetuning), so the dense tensors are kept
    and the structure is read
    off their support:

    * ``K = rows(M) - P``; ``N = cols(M) - P``; grid = ``grid_size`` or the square
      ``sqrt(N) x sqrt(N)`` (the official code assumes a square grid).
    * ``assign[j]`` = ``argmax_k |M[P + k, P + j]|`` over the non-zero support of patch
      column ``j``; ``-1`` if that column is all zero or ``t[P + j] == 0`` (pruned: the token
      takes the shortcut).
    * ``centers[k]`` = the member of group ``k`` with the largest merge weight (the first on
      ties). If the centers are not increasing in raster order, the merged tokens are
      re-ordered (rows of M and columns of R permuted together; exact, since the blocks in
      between are permutation-equivariant over tokens).
    * ``merge_weight`` / ``restore_weight`` = M / R on that support.

    Args:
        merge_matrix (Tensor): M, ``(P + K, P + N)``.
        restore_matrix (Tensor): R, ``(P + N, P + K)``.
        token_mask (Tensor, optional): t, ``P + N`` values (any shape), 1 = merged or kept,
            0 = pruned; all ones if None.
        grid_size (tuple[int, int], optional): ``(H_g, W_g)`` with ``H_g * W_g = N``.
        num_prefix (int): P (the class token). Default: 1.
        where (str): prefix of error messages.

    Returns:
        tuple: ``(structure, M, R, notes)``: the validated :class:`PMStructure`, M and R (rows
        / columns re-ordered if needed, values unchanged) and notes for the report.

    Raises:
        StructureError: inconsistent shapes, a grid that does not hold N patches, or a merged
            token that no patch column attributes to its row (drifted beyond recognition).
    """
    p = int(num_prefix)
    m, r = merge_matrix.detach(), restore_matrix.detach()
    if m.dim() != 2 or m.shape[0] <= p or m.shape[1] <= p:
        raise StructureError(f'{where}: merge matrix must be 2-D (P + K, P + N) with K, N >= '
                             f'1, got {tuple(m.shape)}')
    k, n = m.shape[0] - p, m.shape[1] - p
    if tuple(r.shape) != (p + n, p + k):
        raise StructureError(f'{where}: recover matrix has shape {tuple(r.shape)}, expected '
                             f'{(p + n, p + k)} for merge matrix {tuple(m.shape)}')
    if grid_size is None:
        side = math.isqrt(n)
        if side * side != n:
            raise StructureError(f'{where}: {n} patch tokens do not form a square grid; give '
                                 f'the crop size (--img-size)')
        grid = (side, side)
    else:
        grid = tuple(int(v) for v in grid_size)
        if grid[0] * grid[1] != n:
            raise StructureError(f'{where}: the matrices hold N={n} patch tokens, the grid '
                                 f'{grid[0]}x{grid[1]} holds {grid[0] * grid[1]}')
    t = torch.ones(p + n) if token_mask is None else token_mask.detach().flatten().float()
    if t.numel() != p + n:
        raise StructureError(f'{where}: token mask has {t.numel()} values, expected {p + n}')
    notes = []
    patch_cols = m[p:, p:].double()                                   # (K, N)
    mag = patch_cols.abs()
    assign = mag.argmax(dim=0)
    pruned = (mag == 0).all(dim=0) | (t[p:] == 0)
    assign[pruned] = -1
    counts = torch.bincount(assign[assign >= 0], minlength=k)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise StructureError(
            f'{where}: merged token(s) {empty[:10]} (rows of M) are the largest weight of no '
            f'patch column: the matrices have drifted too far to derive a grouping')
    cols = torch.arange(n)
    weight = patch_cols[assign.clamp(min=0), cols]                     # signed merge weight
    centers = torch.empty(k, dtype=torch.long)
    for g in range(k):
        members = torch.nonzero(assign == g).flatten()
        centers[g] = members[int(torch.argmax(weight[members]))]
    order = torch.argsort(centers, stable=True)
    if not torch.equal(order, torch.arange(k)):
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(k)
        assign = torch.where(assign >= 0, inverse[assign.clamp(min=0)], assign)
        centers = centers[order]
        rows = torch.cat([torch.arange(p), p + order])
        m, r = m[rows], r[:, rows]
        notes.append(f'{where}: merged tokens re-ordered to raster order of their centers (rows '
                     f'of M and columns of R permuted together; the function is unchanged)')
    cls_dev = 0.0
    if p:  # prefix rows / columns of M and R should be the identity (CLS passes through)
        ref = torch.zeros(p + k, p + n, dtype=m.dtype)
        ref[:p, :p] = torch.eye(p)
        cls_dev = max(float((m[:p] - ref[:p]).abs().max()),
                      float((m[:, :p] - ref[:, :p]).abs().max()),
                      float((r[:p] - ref.t()[:p]).abs().max()),
                      float((r[:, :p] - ref.t()[:, :p]).abs().max()))
    if cls_dev > 0:
        notes.append(f'{where}: the class-token row / column of M and R deviates from the '
                     f'identity by up to {cls_dev:.3g} (trained densely); kept exactly')
    mw, rw = support_weights(m, r, assign, p)
    structure = PMStructure(grid, assign, centers, mw, rw)
    validate_structure(structure, where=where)
    return structure, m, r, notes


def support_weights(merge_matrix: Tensor, restore_matrix: Tensor, assign: Tensor,
                    num_prefix: int) -> Tuple[Tensor, Tensor]:
    """The sparse support ``(merge_weight, restore_weight)`` of dense M and R.

    Args:
        merge_matrix (Tensor): M, ``(P + K, P + N)``.
        restore_matrix (Tensor): R, ``(P + N, P + K)``.
        assign (Tensor): LongTensor ``(N,)``, group per patch or -1 (pruned: weight 0).
        num_prefix (int): P.

    Returns:
        tuple[Tensor, Tensor]: float32 ``(N,)`` each.
    """
    p, n = num_prefix, assign.numel()
    kept = torch.nonzero(assign >= 0).flatten()
    mw = torch.zeros(n, device=assign.device)
    rw = torch.zeros(n, device=assign.device)
    mw[kept] = merge_matrix.detach()[p + assign[kept], p + kept].float()
    rw[kept] = restore_matrix.detach()[p + kept, p + assign[kept]].float()
    return mw, rw
