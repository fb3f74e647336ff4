"""Global cross-layer compression-structure search (Mao et al., IEEE TMM 2025, arXiv 2503.23455;
official ``pm-vit/tm_prune_merge_to_center.py`` ``tm_prune``, ``mode='attn'``).

1. Per-layer L2 normalisation ``s_hat = s / (||s||_2 + 1e-8)`` over the N patch tokens.
2. Depth discount ``s_hat *= (1 - depth_discount * l)``, ``l`` the absolute 0-based block index
   (official classification 0.025; official segmentation (PM-Segmenter) 0, i.e. none).
3. Span units (mode 'span') score a token by the mean of ``s_hat`` over blocks ``a..b``; the
   discount uses the span's first block.
4. ``allocation='global'``: pool the scores of all U units and rank them once; the
   ``int(N * keep_rate) * U`` highest become centers, the ``int(N * prune_rate) * U`` lowest are
   pruned, the rest merged, so K differs per unit.
   ``allocation='uniform'``: the same rule inside each unit (PM-Segmenter's per-layer
   thresholds, ``segm/tm_prune.py``).

Differences from the official code, all documented in the returned rows:

* ties are broken by rank order (earlier unit, then earlier token first), so the counts are
  exact; the official ``>=`` threshold admits every tie;
* every unit keeps at least one center (the official builder crashes on zero centers): a
  unit left without one gets its best token as center and the lowest-scored center of a unit
  with several becomes a merged token, so the total stays exact;
* a layer whose scores are all zero or not finite falls back to flat scores (a warning is
  logged): it is then compressed by raster position only.
"""
import warnings
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from ..functional import prune_merge as pm
from ..functional.prune_merge import PMStructure
from ..utils.markdown import markdown_table, span_label


def normalize_scores(scores: Dict[int, Tensor], depth_discount: float = 0.025
                     ) -> Dict[int, Tensor]:
    """Per-layer L2 normalisation and depth discount (steps 1-2).

    Args:
        scores (dict[int, Tensor]): block index -> ``(N,)`` raw scores.
        depth_discount (float): per-block discount, in [0, 1 / num_blocks). Default: 0.025.

    Returns:
        dict[int, Tensor]: block index -> float64 ``(N,)`` normalised, discounted scores.

    Raises:
        ValueError: a discount that would make a factor <= 0.
    """
    out = {}
    for layer, s in sorted(scores.items()):
        factor = 1.0 - depth_discount * layer
        if factor <= 0:
            raise ValueError(f'depth_discount {depth_discount} makes block {layer} weigh '
                             f'{factor:.3f} <= 0')
        s = s.detach().double().cpu()
        if not bool(torch.isfinite(s).all()) or float(s.abs().sum()) == 0:
            warnings.warn(f'Prune-and-Merge scores of block {layer} are all zero or not '
                          f'finite; using flat scores (compression by raster position only)')
            s = torch.ones_like(s)
        out[layer] = s / (s.norm(p=2) + pm.EPS) * factor
    return out


def unit_scores(norm_scores: Dict[int, Tensor], spans: Sequence[Tuple[int, int]]
                ) -> List[Tensor]:
    """Score per unit: the block's scores (a == b) or their mean over ``a..b`` (step 3)."""
    out = []
    for a, b in spans:
        missing = [i for i in range(a, b + 1) if i not in norm_scores]
        if missing:
            raise KeyError(f'no scores for blocks {missing} of span ({a}, {b})')
        out.append(torch.stack([norm_scores[i] for i in range(a, b + 1)]).mean(0))
    return out


def search_structures(scores: Dict[int, Tensor], spans: Sequence[Tuple[int, int]],
                      grid_size: Sequence[int], *, keep_rate: float, prune_rate: float = 0.0,
                      allocation: str = 'global', depth_discount: float = 0.025,
                      official_row_clip: bool = True) -> Tuple[Dict[int, PMStructure], List[dict]]:
    """Turn raw scores into one merge-to-center structure per unit.

    Args:
        scores (dict[int, Tensor]): block index -> ``(N,)`` raw scores (from the scoring pass);
            must cover every block of every span.
        spans (list[tuple[int, int]]): the units, inclusive ``(a, b)``.
        grid_size (tuple[int, int]): ``(H_g, W_g)`` with ``H_g * W_g = N``.
        keep_rate, prune_rate, allocation, depth_discount, official_row_clip: see
            :class:`mmseg_pm.compression.CompressSettings` (validated there).

    Returns:
        tuple: (dict unit start -> PMStructure, list of table rows dict(span, N, K, merged,
        pruned, keep)).

    Raises:
        ValueError: score length != N.
    """
    h, w = (int(v) for v in grid_size)
    n = h * w
    for i, s in scores.items():
        if s.numel() != n:
            raise ValueError(f'block {i}: {s.numel()} scores for a {h}x{w} grid ({n} tokens)')
    per_unit = unit_scores(normalize_scores(scores, depth_discount), spans)
    u = len(per_unit)
    centers = [torch.zeros(n, dtype=torch.bool) for _ in range(u)]
    pruned = [torch.zeros(n, dtype=torch.bool) for _ in range(u)]
    n_keep, n_prune = max(1, int(n * keep_rate)), int(n * prune_rate)
    if allocation == 'uniform':
        for k, s in enumerate(per_unit):
            centers[k], pruned[k] = pm.select_tokens(s, n_keep, min(n_prune, n - n_keep))
    else:
        pooled = torch.cat(per_unit)
        c, p = pm.select_tokens(pooled, n_keep * u, min(n_prune * u, n * u - n_keep * u))
        centers, pruned = list(c.view(u, n)), list(p.view(u, n))
        _ensure_one_center(centers, pruned, per_unit, pooled)
    structures, rows = {}, []
    for (a, b), s, c, p in zip(spans, per_unit, centers, pruned):
        st = pm.build_structure(s.float(), c, p, (h, w), official_row_clip)
        structures[a] = st
        k = st.num_groups
        rows.append(dict(span=[a, b], N=n, K=k, merged=n - k - int(p.sum()), pruned=int(p.sum()),
                         keep=round(k / n, 4)))
    return structures, rows


def _ensure_one_center(centers, pruned, per_unit, pooled) -> None:
    """Give every unit at least one center, keeping the total: a unit without one takes its
    best token, and the lowest-scored center of a unit with several becomes a merged token."""
    n = centers[0].numel()
    for k, s in enumerate(per_unit):
        if bool(centers[k].any()):
            continue
        best = int(torch.argmax(s))
        centers[k] = centers[k].clone()
        centers[k][best] = True
        pruned[k] = pruned[k].clone()
        pruned[k][best] = False
        donors = torch.cat([c & (c.sum() > 1) for c in centers])
        if bool(donors.any()):
            flat = torch.where(donors, pooled, torch.full_like(pooled, float('inf')))
            worst = int(torch.argmin(flat))
            centers[worst // n] = centers[worst // n].clone()
            centers[worst // n][worst % n] = False


def structure_table(rows: List[dict]) -> str:
    """Markdown table of the search result (block(s), N, K, merged, pruned, K / N, total)."""
    body = [[span_label(r['span']), r['N'], r['K'], r['merged'], r['pruned'], f"{r['keep']:.3f}"]
            for r in rows]
    tot_n, tot_k = sum(r['N'] for r in rows), sum(r['K'] for r in rows)
    body.append(['all', tot_n, tot_k, sum(r['merged'] for r in rows),
                 sum(r['pruned'] for r in rows), f'{tot_k / max(tot_n, 1):.3f}'])
    return markdown_table(['block(s)', 'N', 'K', 'merged', 'pruned', 'K / N'], body)
