"""Scoring pass + structure search + installation, on a built segmentor; random structures for
estimates (Mao et al., IEEE TMM 2025, arXiv 2503.23455: the compression step)."""
from typing import Iterable

import torch
from mmengine.logging import print_log

from ..errors import ConfigError
from ..functional import prune_merge as pm
from ..models.backbones import PruneMergeViT, reduction_backbone
from .scoring import score_segmentor
from .search import search_structures, structure_table
from .settings import CompressSettings


def pm_backbone(model) -> PruneMergeViT:
    """The ``PruneMergeViT`` backbone (with units) of a (possibly wrapped) segmentor.

    Raises:
        ConfigError: the backbone is not a PruneMergeViT with a ``pm_cfg``.
    """
    backbone = reduction_backbone(model)
    if not isinstance(backbone, PruneMergeViT) or backbone.pm is None:
        raise ConfigError('Prune-and-Merge compression needs model.backbone = PruneMergeViT '
                          f'with a pm_cfg (got {type(getattr(model, "backbone", None)).__name__})')
    return backbone


def compress_segmentor(model, data: Iterable, settings: CompressSettings,
                       progress: bool = True) -> dict:
    """Score, search and install the structure of every unit of ``model.backbone``.

    A ``PMDistillEncoderDecoder`` gets its teacher frozen from the uncompressed weights first.

    Args:
        model: the segmentor (unwrapped or wrapped), its backbone not yet compressed.
        data (Iterable): training batches for the scoring pass.
        settings (CompressSettings): keep / prune rates, allocation, scoring iterations, ...
        progress (bool): progress bar. Default: True.

    Returns:
        dict: ``settings``, ``rows`` (per unit: span, N, K, merged, pruned, keep), ``table``
        (markdown), ``structure`` (:meth:`PruneMergeViT.structure_summary`), ``scores``
        (block -> list of raw scores).

    Raises:
        ConfigError: no PruneMergeViT backbone, or it is already compressed.
    """
    model = getattr(model, 'module', model)
    backbone = pm_backbone(model)
    if backbone.is_compressed:
        raise ConfigError('the backbone already holds a compression structure')
    spans = backbone.pm.spans
    blocks = sorted({i for a, b in spans for i in range(a, b + 1)})
    if hasattr(model, 'init_teacher') and model.teacher is None:
        model.init_teacher()
    s = settings
    print_log(f'Prune-and-Merge: scoring {len(blocks)} blocks over {s.score_iters} iterations '
              f'({s.score_mode} mode)', logger='current')
    scores = score_segmentor(model, data, s.score_iters, blocks, s.score_mode,
                             progress=progress)
    structures, rows = search_structures(
        scores, spans, backbone.grid_size, keep_rate=s.keep_rate, prune_rate=s.prune_rate,
        allocation=s.allocation, depth_discount=s.depth_discount,
        official_row_clip=s.official_row_clip)
    backbone.install_structures(structures)
    table = structure_table(rows)
    print_log(f'Prune-and-Merge structure (keep_rate={s.keep_rate}, prune_rate={s.prune_rate}, '
              f'allocation={s.allocation}, depth_discount={s.depth_discount}):\n{table}',
              logger='current')
    return dict(settings=s.to_dict(), rows=rows, table=table,
                structure=backbone.structure_summary(),
                scores={str(k): v.tolist() for k, v in scores.items()})


def random_structures(model, settings: CompressSettings, seed: int = 0) -> str:
    """Install a uniform structure from random scores in every unit (a quick estimate).

    Every unit gets ``K = max(1, int(N * keep_rate))`` centers and ``int(N * prune_rate)``
    pruned patches chosen by i.i.d. uniform random scores
    (:func:`mmseg_pm.functional.prune_merge.structure_from_scores`), so token counts, FLOPs and
    speed are those of a compressed model with the same keep rate in every layer; the structure
    is **not** a searched one and the weights are not finetuned.

    Args:
        model: segmentor whose backbone is an uncompressed ``PruneMergeViT``.
        settings (CompressSettings): ``keep_rate``, ``prune_rate``, ``official_row_clip``.
        seed (int): seed of the random scores (unit ``a`` uses ``seed + a``). Default: 0.

    Returns:
        str: the label reports must carry, e.g.
        ``'random uniform (keep_rate=0.6, prune_rate=0.1; estimate)'``.

    Raises:
        ConfigError: no ``PruneMergeViT`` with units, or already compressed.
    """
    backbone = pm_backbone(model)
    if backbone.is_compressed:
        raise ConfigError('the model already carries a Prune-and-Merge structure')
    grid = backbone.grid_size
    structures = {}
    for a, _ in backbone.pm.spans:
        g = torch.Generator().manual_seed(int(seed) + a)
        scores = torch.rand(grid[0] * grid[1], generator=g)
        structures[a] = pm.structure_from_scores(scores, grid, settings.keep_rate,
                                                 settings.prune_rate,
                                                 settings.official_row_clip)
    backbone.install_structures(structures)
    return (f'random uniform (keep_rate={settings.keep_rate:g}, '
            f'prune_rate={settings.prune_rate:g}; estimate)')


__all__ = ['pm_backbone', 'compress_segmentor', 'random_structures']
