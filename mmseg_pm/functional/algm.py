"""ALGM: adaptive local-then-global token merging (pure token maths).

Norouzi, Orlova, de Geus, Dubbelman, "ALGM: Adaptive Local-then-Global Token Merging for
Efficient Semantic Segmentation with Plain Vision Transformers", CVPR 2024, arXiv 2406.09936.
Official code: tue-mps/algm-segmenter (``algm/algm/local_merge.py: conditional_pooling``,
``algm/algm/global_merge.py: turbo_matching``). Written from the method's equations; nothing is
copied (the global step's matching is ToMe's, see :mod:`mmseg_pm.functional.tome`).

* **Local step** (first block): the patch grid is cut into non-overlapping ``w x w`` windows;
  a window whose mean pairwise cosine similarity reaches the threshold becomes one token, the
  mean of its ``w^2`` tokens (size ``w^2``). Output order: [prefix, merged windows by
  decreasing score, remaining patches in raster order].
* **Global step** (about halfway): ToMe's alternating A/B split and best edges on the
  L2-normalised token features; an edge merges when its score reaches
  ``theta = mean(best) + std(best) * std_scale`` (``std_scale = 1 / layer_number`` by default,
  the released code's rule), with the size-weighted average.

The count of merges depends on the image. ``batch_minimum=False`` (per image, the "adaptive"
reading) pads every image to the batch's largest count with zero rows of size 0;
``batch_minimum=True`` reproduces the released code, where the whole batch merges the smallest
count of any of its images (so an image's result depends on its batch-mates). Unlike the
released code, nothing here needs a GPU.
"""
import math
from numbers import Integral, Real
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, StructureError
from .common import (Reduction, check_tokens, identity_reduction, merge_into_slots, ones_size,
                     slots_to_index, sort_indices)
from .tome import _best_edges, _check_prefix01, _matching_from_counts, merge_weighted

__all__ = ['window_similarity', 'algm_local_merge', 'algm_global_merge']


def _check_grid(grid: Sequence[int], n: int, window: int) -> Tuple[int, int]:
    if not isinstance(window, Integral) or isinstance(window, bool) or window < 2:
        raise ConfigError(f'ALGM window must be an int >= 2, got {window!r}')
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise StructureError(f'grid must be (H, W), got {grid!r}') from None
    if h < 1 or w < 1 or h * w != n:
        raise StructureError(f'grid {(h, w)} does not hold {n} patch tokens')
    if h % window or w % window:
        raise ConfigError(f'ALGM window {window} must divide the patch grid {(h, w)}')
    return h, w


def window_similarity(patches: Tensor, grid: Sequence[int], window: int = 2) -> Tensor:
    """Mean pairwise cosine similarity inside each window (ALGM's local criterion; Norouzi et
    al., CVPR 2024, arXiv 2406.09936; tue-mps/algm-segmenter ``conditional_pooling``).

    ``score_w = mean over the w^2 (w^2 - 1) / 2 distinct pairs (i, j) of window w of
    cos(x_i, x_j)``, windows non-overlapping, in raster order of the window grid.
    Protected tokens: none here; pass the patch tokens only (prefix removed).

    Args:
        patches (Tensor): ``(B, n, C)`` patch tokens only (no prefix), raster order on the grid.
        grid (tuple[int, int]): ``(H, W)`` with ``H * W = n``.
        window (int): window side w (>= 2). Default: 2.

    Returns:
        Tensor: ``(B, (H / w) * (W / w))`` scores in ``[-1, 1]``.

    Raises:
        ConfigError: H or W not divisible by ``window``; ``window`` not an int >= 2.
        StructureError: ``patches`` not 3-d or ``grid`` not matching ``n``.
    """
    if patches.dim() != 3:
        raise StructureError(f'patches must be (B, n, C), got {tuple(patches.shape)}')
    b, n, c = patches.shape
    h, w = _check_grid(grid, n, window)
    q = window * window
    unit = F.normalize(patches, dim=-1).reshape(b, h // window, window, w // window, window, c)
    unit = unit.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, q, c)
    gram = unit @ unit.transpose(-1, -2)  # (B, windows, q, q)
    upper = torch.ones(q, q, dtype=torch.bool, device=patches.device).triu(1)
    return gram[..., upper].sum(-1) / (q * (q - 1) // 2)


def algm_local_merge(x: Tensor, grid: Sequence[int], threshold: float, num_prefix: int = 1,
                     batch_minimum: bool = False, window: int = 2) -> Reduction:
    """ALGM's local step, conditional window pooling (Norouzi et al., CVPR 2024, arXiv
    2406.09936; tue-mps/algm-segmenter ``algm/algm/local_merge.py: conditional_pooling``).

    Scores every ``window x window`` window with :func:`window_similarity` (without gradient);
    windows with ``score >= threshold`` are mergeable. ``batch_minimum=False``: each image
    merges all its mergeable windows and the output is padded to the batch maximum;
    ``batch_minimum=True``: ``m`` = the smallest mergeable count in the batch, and every image
    merges its own top-``m`` windows (the released code's rule). A merged window becomes the
    mean of its tokens, size ``window**2``. Output order: [prefix, merged window tokens in
    decreasing score (ties: lower window index first), remaining patches in raster order].
    With no merge anywhere, ``x`` is returned as is with sizes 1 and the identity index.

    Protected tokens: the ``P`` prefix rows stay first and unchanged and are never scored.
    The input must be unreduced (the raster-ordered grid, every size 1).

    Args:
        x (Tensor): ``(B, P + H * W, C)`` tokens.
        grid (tuple[int, int]): ``(H, W)`` patch grid.
        threshold (float): the similarity threshold (any finite number; above 1 merges
            nothing).
        num_prefix (int): P. Default: 1.
        batch_minimum (bool): the released code's batch-minimum count. Default: False.
        window (int): window side. Default: 2.

    Returns:
        Reduction: ``x`` ``(B, P + K, C)``, ``size`` ``(B, P + K)`` (padding rows: zeros, size
        0), ``index`` ``(B, H * W)``.

    Raises:
        ConfigError: ``threshold`` not a finite number; H or W not divisible by ``window``;
            ``window`` not an int >= 2; bad ``num_prefix``.
        StructureError: ``x`` not 3-d or ``grid`` not matching its patch count.
    """
    if (not isinstance(threshold, Real) or isinstance(threshold, bool)
            or not math.isfinite(threshold)):
        raise ConfigError(f'ALGM threshold must be a finite number, got {threshold!r}')
    n = check_tokens(x, num_prefix)
    h, w = _check_grid(grid, n, window)
    b = x.shape[0]
    size = ones_size(x)
    dev = x.device
    with torch.no_grad():
        score = window_similarity(x[:, num_prefix:].detach(), (h, w), window)  # (B, nw)
        nw = score.shape[1]
        counts = (score >= threshold).sum(1)
        if batch_minimum and b:
            counts = counts.min().expand(b)
        if b == 0 or int(counts.max()) == 0:
            return identity_reduction(x, size, num_prefix)
        order = sort_indices(score, dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(nw, device=dev).expand(b, nw).contiguous())
        rows = torch.arange(h, device=dev)[:, None] // window
        cols = torch.arange(w, device=dev)[None, :] // window
        window_of = (rows * (w // window) + cols).reshape(-1)  # (n,) raster patch -> window
        patch_rank = rank[:, window_of]  # (B, n)
        merged = patch_rank < counts[:, None]
        rest = counts[:, None] + (~merged).long().cumsum(1) - 1
        patch_slot = torch.where(merged, patch_rank, rest)
        num_out = num_prefix + int((n - (window * window - 1) * counts).max())
        prefix = torch.arange(num_prefix, device=dev).expand(b, num_prefix)
        slot = torch.cat([prefix, patch_slot + num_prefix], dim=1)
    out, new_size = merge_into_slots(x, slot, num_out, weight=None, size=size)
    return Reduction(out, new_size, patch_slot)


def algm_global_merge(x: Tensor, size: Optional[Tensor], layer_number: int, num_prefix: int = 1,
                      batch_minimum: bool = False,
                      std_scale: Optional[float] = None) -> Reduction:
    """ALGM's global step, bipartite merging with a statistical threshold (Norouzi et al.,
    CVPR 2024, arXiv 2406.09936; tue-mps/algm-segmenter ``algm/algm/global_merge.py:
    turbo_matching``).

    ToMe's alternating A/B split of the whole sequence and each A token's best B edge, on the
    L2-normalised features ``x`` (not keys), without gradient. With ``best`` the edges of an
    image's eligible A tokens (valid, not prefix), ``mu`` their mean and ``sigma`` their
    unbiased standard deviation (0 with a single token):

    * ``batch_minimum=False``: ``theta_b = mu_b + sigma_b * std_scale`` per image and each
      image merges every edge with ``best >= theta_b``;
    * ``batch_minimum=True`` (the released code): ``theta = mean_b(mu_b) + mean_b(sigma_b) *
      std_scale``, ``r = min_b #{best_b >= theta}``, and each image merges its top-``r`` edges.

    Merges use ToMe's size-weighted average and output order (unmerged A tokens by position,
    then B tokens); per-image counts are padded to the batch maximum with zero rows of size 0.
    With no merge anywhere, the input is returned as is with the identity index.

    Protected tokens: the ``P`` prefix rows are never sources, destinations or part of the
    statistics; padding rows (size 0, e.g. from :func:`algm_local_merge`) neither, and never
    the target of ``index``.

    Args:
        x (Tensor): ``(B, P + n, C)`` tokens, possibly padded.
        size (Tensor | None): ``(B, P + n)`` sizes (0: padding); None means all ones.
        layer_number (int): 1-based index of the block (5 for ViT-S with the step in block 4).
        num_prefix (int): P, 0 or 1. Default: 1.
        batch_minimum (bool): the released code's batch statistics and count. Default: False.
        std_scale (float, optional): the coefficient of ``sigma``; default ``1 / layer_number``.

    Returns:
        Reduction: ``x`` ``(B, P + K, C)``, ``size`` ``(B, P + K)``, ``index`` ``(B, n)``.

    Raises:
        ConfigError: ``layer_number`` not an int >= 1; ``std_scale`` not finite; ``num_prefix``
            not 0 or 1.
        StructureError: ``x`` not 3-d or ``size`` of another shape.
    """
    if not isinstance(layer_number, Integral) or isinstance(layer_number, bool) \
            or layer_number < 1:
        raise ConfigError(f'ALGM layer_number must be an int >= 1, got {layer_number!r}')
    if std_scale is None:
        std_scale = 1.0 / int(layer_number)
    if (not isinstance(std_scale, Real) or isinstance(std_scale, bool)
            or not math.isfinite(std_scale)):
        raise ConfigError(f'ALGM std_scale must be a finite number, got {std_scale!r}')
    _check_prefix01(num_prefix)
    check_tokens(x, num_prefix, size)
    if size is None:
        size = ones_size(x)
    b = x.shape[0]
    valid = size > 0
    best, dst, eligible = _best_edges(x, num_prefix, valid)
    with torch.no_grad():
        count = eligible.sum(1)
        values = torch.where(eligible, best, 0).double()
        mean = values.sum(1) / count.clamp(min=1)
        dev2 = torch.where(eligible, values - mean[:, None], 0) ** 2
        std = (dev2.sum(1) / (count - 1).clamp(min=1)).sqrt()
        if batch_minimum:
            theta = (mean.mean() + std.mean() * std_scale).expand(b) if b else mean
        else:
            theta = mean + std * std_scale
        counts = (eligible & (best.double() >= theta[:, None])).sum(1)
        if batch_minimum and b:
            counts = counts.min().expand(b)
    if b == 0 or int(counts.max()) == 0:
        return identity_reduction(x, size, num_prefix)
    matching = _matching_from_counts(best, dst, eligible, counts, valid)
    out, new_size = merge_weighted(x, size, matching)
    return Reduction(out, new_size, slots_to_index(matching.slot, num_prefix))
