"""Pure token maths of Prune-and-Merge (no ``nn.Module``, no registry).

J. Mao, Y. Shen, J. Guo, Y. Yao, X. Hua, H. T. Shen, "Prune and Merge: Efficient Token
Compression for Vision Transformer with Spatial Information Preserved", IEEE Transactions on
Multimedia 2025 (arXiv 2503.23455). Official code: NUST-Machine-Intelligence-Laboratory/
prune_and_merge (classification, ``pm-vit/``: ``tmvit.py``, ``tm_prune_merge_to_center.py``)
and wafev/PM-Segmenter (segmentation, ``segm/model/blocks.py``, ``segm/tm_prune.py``).

Conventions (see :mod:`mmseg_pm.functional`): tokens ``(B, P + N, C)``, ``P`` prefix (CLS) tokens
first, never merged or pruned, then the ``N = H_g * W_g`` patch tokens in raster order. A
compression *structure* for one layer (or span of layers) partitions the ``N`` patches into
``K`` merge groups plus a pruned set:

- ``assign`` (LongTensor, shape ``(N,)``): the group ``k in [0, K)`` of each patch, ``-1`` for a
  pruned patch.
- ``centers`` (LongTensor, shape ``(K,)``): the patch index of each group's center, increasing.
- ``merge_weight`` (Tensor, shape ``(N,)``): the non-zero support of the merge matrix,
  ``M[P + assign[j], P + j] = merge_weight[j]`` (0 for pruned patches).
- ``restore_weight`` (Tensor, shape ``(N,)``): the support of the reconstruct matrix,
  ``R[P + j, P + assign[j]] = restore_weight[j]`` (0 for pruned patches).

The dense matrices of the paper are ``M`` of shape ``(P + K, P + N)``, ``R`` of shape
``(P + N, P + K)`` and the token mask ``t`` of shape ``(P + N,)`` (1 = kept or merged,
0 = pruned); prefix rows/columns are the identity. ``to_dense_*`` converts exactly.

Applying a structure: :mod:`.prune_merge_sparse` (O(B * N * C) weighted gathers; ``merge_tokens``
and ``restore_patches`` are importable from here too) and :mod:`.prune_merge_dense` (the
matrices).
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError, StructureError
from .prune_merge_sparse import merge_tokens, restore_patches  # noqa: F401 (earlier import path)

#: epsilon of the official code in the weight denominator and the L2 normalisation
#: (``tm_prune_merge_to_center.get_merge_matrix`` / ``tm_prune``)
EPS = 1e-8


@dataclass
class PMStructure:
    """One Prune-and-Merge structure: the merge groups and pruned set of one layer or span.

    Attributes:
        grid_size (tuple[int, int]): patch grid ``(H_g, W_g)`` the structure is built for;
            ``N = H_g * W_g``.
        assign (Tensor): LongTensor ``(N,)``, group of each patch in ``[0, K)`` or -1 (pruned).
        centers (Tensor): LongTensor ``(K,)``, patch index of each group's center, increasing.
        merge_weight (Tensor): ``(N,)`` float, support of the merge matrix M (0 where pruned).
        restore_weight (Tensor): ``(N,)`` float, support of the reconstruct matrix R
            (0 where pruned); :func:`closed_form_restore_weight` gives ``pinv(M)``, R's
            initial value in the paper.
    """
    grid_size: Tuple[int, int]
    assign: Tensor
    centers: Tensor
    merge_weight: Tensor
    restore_weight: Tensor

    @property
    def num_tokens(self) -> int:
        """N, the number of patch tokens."""
        return int(self.assign.numel())

    @property
    def num_groups(self) -> int:
        """K, the number of merged tokens (centers) the block runs on, besides the prefix."""
        return int(self.centers.numel())

    @property
    def pruned(self) -> Tensor:
        """Bool ``(N,)``: patches that skip the block(s) through the shortcut."""
        return self.assign < 0

    def is_identity(self) -> bool:
        """True when K = N, nothing is pruned and M = R = I (the block is unchanged)."""
        n = self.num_tokens
        return (self.num_groups == n
                and bool(torch.equal(self.assign, torch.arange(n, device=self.assign.device)))
                and bool((self.merge_weight == 1).all())
                and bool((self.restore_weight == 1).all()))

    def summary(self) -> dict:
        """JSON-serialisable description: grid, N, K, merged and pruned counts, groups."""
        pruned = self.pruned
        return dict(
            grid_size=list(self.grid_size),
            num_tokens=self.num_tokens,
            num_groups=self.num_groups,
            num_merged=self.num_tokens - self.num_groups - int(pruned.sum()),
            num_pruned=int(pruned.sum()),
            centers=self.centers.tolist(),
            assign=self.assign.tolist(),
        )


# --------------------------------------------------------------------------------------------
# building structures
# --------------------------------------------------------------------------------------------
def identity_structure(grid_size: Sequence[int], device=None) -> PMStructure:
    """Identity structure: every patch is its own center (K = N), M = R = I, nothing pruned.

    Args:
        grid_size (tuple[int, int]): patch grid ``(H_g, W_g)``.
    """
    h, w = (int(v) for v in grid_size)
    n = h * w
    idx = torch.arange(n, device=device)
    ones = torch.ones(n, device=device)
    return PMStructure((h, w), idx, idx.clone(), ones, ones.clone())


def merge_to_center_assign(centers: Tensor, grid_size: Sequence[int],
                           official_row_clip: bool = True) -> Tensor:
    """Group every patch with a center: contiguous raster runs cut at midpoints ("merge to
    center", official ``tm_prune_merge_to_center.get_merge_matrix``).

    Run ``k`` ends at ``ceil((c_k + c_{k+1}) / 2)`` (a tie goes to the later center), clipped at
    the end of the center's image row; the next run starts where the previous one ended; the
    last center takes the tail. The official code (NUST-Machine-Intelligence-Laboratory/
    prune_and_merge, ``pm-vit/tm_prune_merge_to_center.py``, ``get_merge_matrix``) computes the
    center's row as ``(c_k + 1) // W_g`` (off by one for a center in the last column); pass
    ``official_row_clip=False`` for the intended ``c_k // W_g``.

    Args:
        centers (Tensor): LongTensor ``(K,)`` of patch indices, strictly increasing, K >= 1.
        grid_size (tuple[int, int]): ``(H_g, W_g)``.
        official_row_clip (bool): replicate the official off-by-one. Default: True.

    Returns:
        Tensor: LongTensor ``(N,)`` with the run (group) index of every patch.

    Raises:
        StructureError: no center, centers not strictly increasing or out of range.
    """
    h, w = (int(v) for v in grid_size)
    n = h * w
    c = [int(v) for v in centers.tolist()]
    if not c:
        raise StructureError('a structure needs at least one center (K >= 1)')
    if any(b <= a for a, b in zip(c, c[1:])) or c[0] < 0 or c[-1] >= n:
        raise StructureError(f'centers must be strictly increasing patch indices in [0, {n})')
    assign = torch.empty(n, dtype=torch.long)
    left = 0
    for k in range(len(c) - 1):
        right = -(-(c[k] + c[k + 1]) // 2)  # ceil
        row = (c[k] + 1) // w if official_row_clip else c[k] // w
        if right // w > row:
            right = (row + 1) * w
        assign[left:right] = k
        left = right
    assign[left:] = len(c) - 1
    return assign.to(centers.device)


def closed_form_restore_weight(assign: Tensor, merge_weight: Tensor) -> Tensor:
    """Support of ``R = pinv(M)`` for a merge matrix whose rows have disjoint supports (R's
    initialisation in the paper; the official code calls ``torch.linalg.pinv``).

    ``R[j, k] = M[k, j] / ||M[k, :]||^2`` for patch ``j`` in group ``k``; 0 for pruned patches
    (their column of M is zero). Equals ``torch.linalg.pinv(M)`` on the support.

    Args:
        assign (Tensor): LongTensor ``(N,)``, group per patch or -1.
        merge_weight (Tensor): ``(N,)`` support of M.

    Returns:
        Tensor: ``(N,)`` support of R, same dtype as ``merge_weight``.
    """
    kept = assign >= 0
    groups = assign.clamp(min=0)
    num_groups = int(assign.max()) + 1 if kept.any() else 1
    w = merge_weight * kept
    sq = torch.zeros(num_groups, dtype=w.dtype, device=w.device).index_add_(0, groups, w * w)
    return torch.where(kept, w / sq[groups].clamp_min(torch.finfo(w.dtype).tiny),
                       torch.zeros_like(w))


def build_structure(scores: Tensor, center_mask: Tensor, prune_mask: Tensor,
                    grid_size: Sequence[int], official_row_clip: bool = True,
                    eps: float = EPS) -> PMStructure:
    """Merge-to-center structure from token scores and the center / pruned sets (official
    ``tm_prune_merge_to_center.get_merge_matrix``; R = pinv(M) in closed form).

    Member ``j`` of the group of center ``c`` gets merge weight ``s_j / (s_c + eps)`` (a
    weighted sum, not an average); the center itself gets exactly 1 (the official code gives
    ``s_c / (s_c + 1e-8)``, within 1e-6 of 1, and 0 for a zero-score center, which we avoid);
    pruned patches get 0 and ``assign = -1``. ``restore_weight`` is the closed-form
    ``pinv(M)``.

    Args:
        scores (Tensor): ``(N,)`` non-negative importance of each patch (normalised
            gradient-weighted attention scores).
        center_mask (Tensor): bool ``(N,)``, the centers (K = its sum >= 1).
        prune_mask (Tensor): bool ``(N,)``, the pruned patches (disjoint from centers).
        grid_size (tuple[int, int]): ``(H_g, W_g)`` with ``H_g * W_g = N``.
        official_row_clip (bool): see :func:`merge_to_center_assign`. Default: True.
        eps (float): denominator epsilon of the official code. Default: 1e-8.

    Returns:
        PMStructure

    Raises:
        StructureError: wrong lengths, no center, or a patch both center and pruned.
    """
    h, w = (int(v) for v in grid_size)
    n = h * w
    for name, t in (('scores', scores), ('center_mask', center_mask), ('prune_mask', prune_mask)):
        if t.shape != (n,):
            raise StructureError(f'{name} must have shape ({n},) for grid {h}x{w}, '
                                 f'got {tuple(t.shape)}')
    if bool((center_mask & prune_mask).any()):
        raise StructureError('a patch cannot be both a center and pruned')
    centers = torch.nonzero(center_mask).flatten()
    assign = merge_to_center_assign(centers, (h, w), official_row_clip)
    s = scores.detach().to(torch.float64).clamp_min(0)
    weight = s / (s[centers][assign] + eps)
    weight[centers] = 1.0
    weight[prune_mask] = 0.0
    assign = torch.where(prune_mask, torch.full_like(assign, -1), assign)
    weight = weight.to(torch.float32)
    return PMStructure((h, w), assign, centers, weight,
                       closed_form_restore_weight(assign, weight))


def select_tokens(scores: Tensor, num_keep: int, num_prune: int) -> Tuple[Tensor, Tensor]:
    """Centers = the ``num_keep`` highest scores, pruned = the ``num_prune`` lowest.

    Ties are broken deterministically by position (the earlier patch ranks higher), so the
    counts are exact.

    Args:
        scores (Tensor): ``(N,)``.
        num_keep (int): K, in ``[1, N]``.
        num_prune (int): in ``[0, N - K]``.

    Returns:
        tuple[Tensor, Tensor]: bool masks ``(N,)`` of centers and pruned patches.

    Raises:
        ValueError: ``num_keep`` or ``num_prune`` out of range.
    """
    n = scores.numel()
    if not 1 <= num_keep <= n or not 0 <= num_prune <= n - num_keep:
        raise ValueError(f'need 1 <= num_keep <= N and 0 <= num_prune <= N - num_keep, got '
                         f'num_keep={num_keep}, num_prune={num_prune}, N={n}')
    # stable descending sort: equal scores keep raster order
    order = torch.sort(scores.detach().float(), descending=True, stable=True).indices
    center = torch.zeros(n, dtype=torch.bool, device=scores.device)
    center[order[:num_keep]] = True
    prune = torch.zeros_like(center)
    if num_prune:
        prune[order[n - num_prune:]] = True
    return center, prune


def structure_from_scores(scores: Tensor, grid_size: Sequence[int], keep_rate: float,
                          prune_rate: float = 0.0, official_row_clip: bool = True) -> PMStructure:
    """Uniform structure of one layer: K = max(1, int(N * keep_rate)) centers, int(N *
    prune_rate) pruned, the rest merged (the official per-layer rule of PM-Segmenter's
    ``tm_prune``; the global cross-layer
    search lives in :mod:`mmseg_pm.compression`).

    Args:
        scores (Tensor): ``(N,)`` token importance; higher is more important.
        grid_size (tuple[int, int]): ``(H_g, W_g)``.
        keep_rate (float): in (0, 1].
        prune_rate (float): in [0, 1), ``keep_rate + prune_rate <= 1``.
        official_row_clip (bool): see :func:`merge_to_center_assign`.

    Raises:
        ValueError: rates that give no center or more pruned than non-center patches.
    """
    n = scores.numel()
    num_keep = max(1, int(n * keep_rate))
    num_prune = min(int(n * prune_rate), n - num_keep)
    center, prune = select_tokens(scores, num_keep, num_prune)
    return build_structure(scores, center, prune, grid_size, official_row_clip)


def validate_groups(grid_size: Sequence[int], assign: Tensor, centers: Tensor,
                    where: str = 'Prune-and-Merge structure') -> None:
    """Check the grouping of a structure; raise :class:`StructureError` if inconsistent.

    ``assign`` must be a LongTensor ``(N,)`` with ``N = H_g * W_g`` and values in ``[-1, K)``;
    ``centers`` ``(K,)``, K >= 1, strictly increasing patch indices, each center in its own
    group (``assign[centers[k]] == k``).

    Args:
        grid_size (tuple[int, int]): ``(H_g, W_g)``.
        assign (Tensor): see the module docstring.
        centers (Tensor): see the module docstring.
        where (str): prefix of the error message (which layer / checkpoint entry).
    """
    h, w = (int(v) for v in grid_size)
    n, k = h * w, centers.numel()
    a, c = assign, centers
    if a.dtype != torch.long or c.dtype != torch.long:
        raise StructureError(f'{where}: assign and centers must be int64 tensors')
    if tuple(a.shape) != (n,):
        raise StructureError(f'{where}: assign has shape {tuple(a.shape)}, expected ({n},) '
                             f'for grid {h}x{w}')
    if c.dim() != 1 or k < 1:
        raise StructureError(f'{where}: needs at least one center, got centers of shape '
                             f'{tuple(c.shape)}')
    if bool((a < -1).any()) or bool((a >= k).any()):
        raise StructureError(f'{where}: group indices out of range [-1, {k}) '
                             f'(min {int(a.min())}, max {int(a.max())})')
    if bool((c < 0).any()) or bool((c >= n).any()) or bool((c[1:] <= c[:-1]).any()):
        raise StructureError(f'{where}: centers must be strictly increasing indices in '
                             f'[0, {n})')
    if not torch.equal(a[c], torch.arange(k, device=a.device)):
        raise StructureError(f'{where}: center k must belong to group k')


def validate_structure(s: PMStructure, where: str = 'Prune-and-Merge structure') -> None:
    """:func:`validate_groups` plus finite ``(N,)`` merge / restore weights.

    Raises:
        StructureError: the first inconsistency, prefixed with ``where``.
    """
    validate_groups(s.grid_size, s.assign, s.centers, where)
    n = s.assign.numel()
    for name in ('merge_weight', 'restore_weight'):
        t = getattr(s, name)
        if tuple(t.shape) != (n,):
            raise StructureError(f'{where}: {name} has shape {tuple(t.shape)}, expected '
                                 f'({n},)')
        if not bool(torch.isfinite(t).all()):
            raise StructureError(f'{where}: {name} has non-finite values')


def check_spans(spans: Sequence[Sequence[int]], num_layers: int) -> List[Tuple[int, int]]:
    """Normalise Prune-and-Merge spans: inclusive ``(a, b)`` block pairs, negative indices
    counted from the end, sorted, not overlapping.

    Raises:
        ConfigError: a span out of range, reversed, or overlapping another.
    """
    norm = []
    for span in spans:
        span = tuple(span)
        if len(span) != 2 or not all(-num_layers <= int(v) < num_layers for v in span):
            raise ConfigError(f'span {span} out of range for {num_layers} layers')
        a, b = (int(v) % num_layers for v in span)
        if a > b:
            raise ConfigError(f'span {span}: start after end')
        norm.append((a, b))
    norm.sort()
    for (a0, b0), (a1, b1) in zip(norm, norm[1:]):
        if a1 <= b0:
            raise ConfigError(f'spans ({a0}, {b0}) and ({a1}, {b1}) overlap')
    return norm
