"""Scoring pass + structure search + installation, on a built segmentor (method.md §2-3)."""
from typing import Iterable, Optional

from mmengine.logging import print_log

from ..models.backbones.prune_merge_vit import PruneMergeViT
from .scoring import score_segmentor
from .search import format_table, search_structures

#: pm_cfg keys of the compression step that callers may override
COMPRESS_KEYS = ('keep_rate', 'prune_rate', 'allocation', 'depth_discount', 'official_row_clip',
                 'score_iters', 'score_mode')


def get_pm_backbone(model) -> PruneMergeViT:
    """The ``PruneMergeViT`` backbone of a (possibly wrapped) segmentor.

    Raises:
        TypeError: the backbone is not a PruneMergeViT with Prune-and-Merge units.
    """
    model = getattr(model, 'module', model)
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, PruneMergeViT) or not len(backbone.pm):
        raise TypeError('compression needs model.backbone = PruneMergeViT with a pm_cfg '
                        f'(got {type(backbone).__name__})')
    return backbone


def compress_segmentor(model, data: Iterable, overrides: Optional[dict] = None,
                       progress: bool = True) -> dict:
    """Score, search and install the structure of every unit of ``model.backbone``.

    Settings come from ``backbone.pm_cfg``; ``overrides`` may replace any of
    ``COMPRESS_KEYS``. If the model is a ``PMDistillEncoderDecoder`` its teacher is frozen from
    the uncompressed weights first.

    Args:
        model: the segmentor (unwrapped or wrapped), its backbone not yet compressed.
        data (Iterable): training batches for the scoring pass.
        overrides (dict, optional): compression settings to use instead of ``pm_cfg``'s.
        progress (bool): progress bar. Default: True.

    Returns:
        dict: ``settings``, ``rows`` (per unit: span, N, K, merged, pruned, keep), ``table``
        (markdown), ``structure`` (:meth:`PruneMergeViT.structure_summary`), ``scores``
        (block -> list of raw scores).

    Raises:
        TypeError: no PruneMergeViT backbone.
        ValueError: already compressed, or bad settings (rates, score_iters, ...).
    """
    model = getattr(model, 'module', model)
    backbone = get_pm_backbone(model)
    if backbone.is_compressed:
        raise ValueError('the backbone already holds a compression structure')
    settings = {k: backbone.pm_cfg[k] for k in COMPRESS_KEYS}
    unknown = set(overrides or {}) - set(COMPRESS_KEYS)
    if unknown:
        raise ValueError(f'unknown compression settings {sorted(unknown)}')
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    from ..models.utils.prune_merge import check_rates
    check_rates(settings['keep_rate'], settings['prune_rate'])
    spans = [(u.start, u.end) for u in backbone.pm_units]
    blocks = sorted({i for a, b in spans for i in range(a, b + 1)})
    if hasattr(model, 'init_teacher'):
        model.init_teacher()
    print_log(f'Prune-and-Merge: scoring {len(blocks)} blocks over {settings["score_iters"]} '
              f'iterations ({settings["score_mode"]} mode)', logger='current')
    scores = score_segmentor(model, data, settings['score_iters'], blocks,
                             settings['score_mode'], progress=progress)
    structures, rows = search_structures(
        scores, spans, tuple(backbone.structure_grid), settings['keep_rate'],
        settings['prune_rate'], settings['allocation'], settings['depth_discount'],
        settings['official_row_clip'])
    backbone.install_structures(structures)
    table = format_table(rows)
    print_log('Prune-and-Merge structure (keep_rate={keep_rate}, prune_rate={prune_rate}, '
              'allocation={allocation}, depth_discount={depth_discount}):\n'.format(**settings)
              + table, logger='current')
    return dict(settings=settings, rows=rows, table=table,
                structure=backbone.structure_summary(),
                scores={str(k): v.tolist() for k, v in scores.items()})
