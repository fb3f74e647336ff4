"""Building segmentors for the analysis tools: config + checkpoint (strict), quick structures.

Shared by :mod:`mmseg_pm.analysis.flops`, :mod:`mmseg_pm.analysis.benchmark` and the tools
under ``tools/analysis_tools``, ``tools/deployment`` and ``tools/visualize_tokens.py``.
"""
import copy
import os.path as osp
from typing import Optional, Sequence, Tuple, Union

import torch
from mmengine.config import Config
from torch import nn

from ..utils.preflight import UserError, check_checkpoint, check_config_path

#: how the Prune-and-Merge structure of an analysed model came about
STRUCTURE_NONE = 'none (uncompressed)'
STRUCTURE_CHECKPOINT = 'checkpoint'


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """Read a config file (or copy a Config) and apply ``--cfg-options`` overrides.

    Args:
        config (str | Config): config path or object (not modified).
        cfg_options (dict, optional): mmengine ``DictAction`` overrides.

    Returns:
        Config: a new config.

    Raises:
        UserError: the config file does not exist.
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        check_config_path(str(config))
        cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _segmentor_cfg(cfg: Config) -> dict:
    model = copy.deepcopy(cfg.model)
    if model.get('type') == 'SegTTAModel':
        model = model['module']
    # no pretrained weights: the weights come from the checkpoint (or are random)
    model['pretrained'] = None
    for key in ('backbone', 'decode_head', 'neck', 'auxiliary_head'):
        sub = model.get(key)
        if isinstance(sub, dict) and 'init_cfg' in sub:
            sub['init_cfg'] = None
    return model


def load_segmentor(config: Union[str, Config], checkpoint: Optional[str] = None,
                   cfg_options: Optional[dict] = None, device: str = 'cpu',
                   strict: bool = True) -> nn.Module:
    """Build the config's segmentor in eval mode and load ``checkpoint`` (strictly by default).

    A Prune-and-Merge checkpoint installs its structure while loading (``PruneMergeViT``
    re-shapes its units from the state dict). Without a checkpoint the weights are mmseg's
    random initialisation (``init_weights``); no pretrained file is read.

    Args:
        config (str | Config): config path or object.
        checkpoint (str, optional): local checkpoint file.
        cfg_options (dict, optional): config overrides.
        device (str): ``'cpu'``, ``'cuda'`` or ``'cuda:N'``. Default: ``'cpu'``.
        strict (bool): strict state-dict loading. Default: True.

    Returns:
        nn.Module: the segmentor (``model.cfg`` is the config; ``model.dataset_meta`` comes
        from the checkpoint's meta when it has one).

    Raises:
        UserError: missing config or checkpoint, or a checkpoint that does not fit the config.
        PMStructureError: inconsistent Prune-and-Merge tensors in the checkpoint.
    """
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS

    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(_segmentor_cfg(cfg))
    if checkpoint:
        check_checkpoint(checkpoint, 'checkpoint')
        try:
            ckpt = load_checkpoint(model, checkpoint, map_location='cpu', strict=strict,
                                   logger='silent')
        except RuntimeError as e:
            detail = ' '.join(str(e).split())
            if len(detail) > 600:
                detail = detail[:600] + ' ...'
            raise UserError(f'{checkpoint} does not fit {getattr(cfg, "filename", "the config")}'
                            f' (strict loading): {detail}') from e
        meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
        if isinstance(meta, dict) and meta.get('dataset_meta'):
            model.dataset_meta = meta['dataset_meta']
    else:
        model.init_weights()
    model.cfg = cfg
    model.to(device)
    model.eval()
    return model


def get_backbone(model: nn.Module):
    """The ``PruneMergeViT`` backbone of a (possibly wrapped) segmentor, or None."""
    from ..models.backbones.prune_merge_vit import PruneMergeViT
    model = getattr(model, 'module', model)
    backbone = getattr(model, 'backbone', None)
    return backbone if isinstance(backbone, PruneMergeViT) else None


def is_compressed(model: nn.Module) -> bool:
    """True when the segmentor's backbone is a ``PruneMergeViT`` holding a structure."""
    backbone = get_backbone(model)
    return bool(backbone is not None and backbone.is_compressed)


def install_uniform_structure(model: nn.Module, keep_rate: float,
                              prune_rate: Optional[float] = None, seed: int = 0) -> str:
    """Install a uniform structure from random scores in every unit (a quick estimate).

    Every unit gets ``K = max(1, int(N * keep_rate))`` centers and ``int(N * prune_rate)``
    pruned patches chosen by i.i.d. uniform random scores
    (:func:`mmseg_pm.models.utils.prune_merge.structure_from_scores`), so token counts, FLOPs
    and speed are those of a compressed model with the same keep rate in every layer; the
    structure is **not** a searched one and the weights are not finetuned.

    Args:
        model (nn.Module): segmentor whose backbone is an uncompressed ``PruneMergeViT``.
        keep_rate (float): in (0, 1].
        prune_rate (float, optional): in [0, 1); default: the config's ``pm_cfg.prune_rate``.
        seed (int): seed of the random scores (unit ``a`` uses ``seed + a``). Default: 0.

    Returns:
        str: the label that reports must carry, e.g.
        ``'random uniform (keep_rate=0.6, prune_rate=0.1; estimate)'``.

    Raises:
        UserError: no ``PruneMergeViT`` with units, already compressed, or rates out of range.
    """
    from ..models.utils import prune_merge as pm
    backbone = get_backbone(model)
    if backbone is None or not len(backbone.pm):
        raise UserError('--keep-rate needs a Prune-and-Merge config (backbone PruneMergeViT '
                        'with pm_cfg, e.g. configs/pm_segmenter_vit-s_ade20k.py)')
    if backbone.is_compressed:
        raise UserError('the checkpoint already carries a Prune-and-Merge structure; drop '
                        '--keep-rate to use it')
    if prune_rate is None:
        prune_rate = float(backbone.pm_cfg.get('prune_rate', 0.0))
    try:
        pm.check_rates(keep_rate, prune_rate)
    except ValueError as e:
        raise UserError(str(e)) from e
    structures = {}
    for unit in backbone.pm_units:
        grid = tuple(unit.grid_size.tolist())
        g = torch.Generator().manual_seed(int(seed) + unit.start)
        scores = torch.rand(grid[0] * grid[1], generator=g)
        structures[unit.start] = pm.structure_from_scores(
            scores, grid, keep_rate, prune_rate,
            official_row_clip=bool(backbone.pm_cfg.get('official_row_clip', True)))
    backbone.install_structures(structures)
    return f'random uniform (keep_rate={keep_rate:g}, prune_rate={prune_rate:g}; estimate)'


def structure_label(model: nn.Module, random_label: Optional[str] = None) -> str:
    """How the structure of ``model`` came about: ``random_label``, 'checkpoint' or 'none'."""
    if random_label:
        return random_label
    return STRUCTURE_CHECKPOINT if is_compressed(model) else STRUCTURE_NONE


def default_input_shape(model: nn.Module, cfg: Optional[Config] = None) -> Tuple[int, int]:
    """The fixed input size ``(H, W)`` in pixels the model is analysed at.

    Order: the backbone's ``img_size`` (the crop a compression structure is built for), the
    data preprocessor's ``size``, the config's ``crop_size``, else 512 x 512.
    """
    backbone = getattr(model, 'backbone', None)
    size = getattr(backbone, 'img_size', None)
    if size is None:
        size = getattr(getattr(model, 'data_preprocessor', None), 'size', None)
    if size is None and cfg is not None:
        size = cfg.get('crop_size', None)
    if size is None:
        size = (512, 512)
    if isinstance(size, int):
        size = (size, size)
    return int(size[0]), int(size[1])


def parse_shape(shape: Optional[Sequence[int]]) -> Optional[Tuple[int, int]]:
    """``--shape H [W]`` -> ``(H, W)`` (square when one value); None stays None.

    Raises:
        UserError: not one or two positive integers.
    """
    if shape is None:
        return None
    if len(shape) == 1:
        shape = (shape[0], shape[0])
    if len(shape) != 2 or min(shape) < 1:
        raise UserError(f'--shape takes H W (positive pixels), got {list(shape)}')
    return int(shape[0]), int(shape[1])


def config_name(config: Union[str, Config]) -> str:
    """Stem of a config path (``'pm_segmenter_vit-s_ade20k'``) for tables and JSON."""
    path = config if isinstance(config, str) else getattr(config, 'filename', 'config')
    return osp.splitext(osp.basename(str(path)))[0]


def quiet_logging(level: str = 'WARNING') -> None:
    """Make MMEngine's current logger print only ``level`` and above (for the tools, which run
    no Runner: mmengine's ``init_weights`` otherwise logs one INFO block per parameter)."""
    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmseg_pm_analysis', log_level=level)
