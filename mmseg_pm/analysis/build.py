"""Building segmentors for the analysis tools: config + checkpoint (strict), variants of a config
(mmseg's stock model, the uncompressed model, a reducer swapped in), real input images."""
import copy
import logging
from typing import List, Optional, Sequence, Tuple, Union

import torch
from mmengine.config import Config
from torch import Tensor, nn

from ..compat import load_local_checkpoint
from ..converters.fit import fitting_state_dict
from ..errors import ConfigError, UserError
from ..models.backbones import reduction_backbone
from ..utils.preflight import check_checkpoint, check_dataset, read_config

#: backbone types whose weights are mmseg's ``VisionTransformer``'s
VIT_TYPES = ('VisionTransformer', 'TokenReductionViT', 'PruneMergeViT')
#: mmseg decode head -> the same head with fused attention
FUSED_HEADS = {'SegmenterMaskTransformerHead': 'FusedSegmenterMaskTransformerHead'}
#: backbone keys that only our backbones take
REDUCTION_KEYS = ('token_reduction', 'pm_cfg', 'restore_outputs')


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """Read a config file (:func:`mmseg_pm.utils.preflight.read_config`, which also applies a
    ``data_root=`` override to the dataloaders) or copy a Config, and apply ``--cfg-options``
    overrides.

    Raises:
        UserError: the config file does not exist, does not parse or defines no model.
    """
    if not isinstance(config, Config):
        return read_config(str(config), cfg_options)
    cfg = copy.deepcopy(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def segmentor_cfg(cfg: Config) -> dict:
    """The segmentor part of ``cfg.model`` (inside a ``SegTTAModel``), without pretrained
    weights (analysis models take their weights from a checkpoint, or stay random)."""
    model = copy.deepcopy(cfg.model)
    if model.get('type') == 'SegTTAModel':
        model = model['module']
    model['pretrained'] = None
    for key in ('backbone', 'decode_head', 'neck', 'auxiliary_head'):
        sub = model.get(key)
        if isinstance(sub, dict) and 'init_cfg' in sub:
            sub['init_cfg'] = None
    return model


def check_plain_vit(model_cfg: dict, what: str) -> None:
    """Raise ConfigError unless the backbone is mmseg's ``VisionTransformer`` (or ours)."""
    kind = (model_cfg.get('backbone') or {}).get('type')
    if kind not in VIT_TYPES:
        raise ConfigError(f'{what}: the backbone is {kind!r}; token reduction supports plain '
                          f'ViT backbones: {", ".join(VIT_TYPES)} (mmseg\'s VisionTransformer '
                          f'configs: Segmenter, SETR, UPerNet-ViT, DPT, ...)')


def variant_cfg(model_cfg: dict, kind: str, token_reduction: Optional[dict] = None) -> dict:
    """A variant of a segmentor config with the same weights.

    Args:
        model_cfg (dict): a segmentor config whose backbone is a plain ViT.
        kind (str): ``'stock'`` (mmseg's ``VisionTransformer`` and heads, explicit attention),
            ``'plain'`` (``TokenReductionViT`` without reduction, fused attention) or
            ``'reduced'`` (``TokenReductionViT`` with ``token_reduction``, fused attention).
        token_reduction (dict, optional): the reducer of ``'reduced'``.

    Returns:
        dict: a new config; the segmentor is a plain ``EncoderDecoder``.
    """
    cfg = copy.deepcopy(model_cfg)
    if cfg.get('type') == 'PMDistillEncoderDecoder':
        cfg['type'] = 'EncoderDecoder'
        cfg.pop('distill_cfg', None)
    backbone = cfg['backbone']
    for key in REDUCTION_KEYS:
        backbone.pop(key, None)
    head = cfg.get('decode_head') or {}
    if kind == 'stock':
        backbone['type'] = 'VisionTransformer'
        stock = {v: k for k, v in FUSED_HEADS.items()}
        head['type'] = stock.get(head.get('type'), head.get('type'))
    else:
        backbone['type'] = 'TokenReductionViT'
        if kind == 'reduced':
            backbone['token_reduction'] = copy.deepcopy(token_reduction)
        head['type'] = FUSED_HEADS.get(head.get('type'), head.get('type'))
    return cfg


def build_segmentor(model_cfg: dict, checkpoint: Optional[str] = None, device: str = 'cpu',
                    default_scope: str = 'mmseg') -> nn.Module:
    """Build a segmentor in eval mode and load ``checkpoint`` strictly.

    A Prune-and-Merge checkpoint installs its structure while loading (the units re-shape to
    it). Without a checkpoint the weights are mmseg's random initialisation.

    Raises:
        UserError: a missing or unreadable checkpoint.
        CheckpointMismatchError: a checkpoint that does not fit (tensor and shapes named).
        StructureError: inconsistent Prune-and-Merge tensors in the checkpoint.
    """
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope(default_scope)
    model = MODELS.build(model_cfg)
    if checkpoint:
        check_checkpoint(checkpoint, 'checkpoint')
        ckpt = load_local_checkpoint(checkpoint, map_location='cpu')
        state = fitting_state_dict(model, ckpt.get('state_dict', ckpt), checkpoint)
        model.load_state_dict(state, strict=True)
        meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
        if isinstance(meta, dict) and meta.get('dataset_meta'):
            model.dataset_meta = meta['dataset_meta']
    else:
        # mmengine logs one INFO record per parameter while initialising: keep tools' output
        # readable
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
    return model.to(device).eval()


def load_segmentor(config: Union[str, Config], checkpoint: Optional[str] = None,
                   cfg_options: Optional[dict] = None, device: str = 'cpu') -> nn.Module:
    """:func:`build_segmentor` from a config file; ``model.cfg`` is the config.

    Raises:
        UserError: missing config or checkpoint, or a checkpoint that does not fit.
    """
    cfg = load_config(config, cfg_options)
    model = build_segmentor(segmentor_cfg(cfg), checkpoint, device,
                            cfg.get('default_scope', 'mmseg'))
    model.cfg = cfg
    return model


def default_input_shape(model: nn.Module, cfg: Optional[Config] = None) -> Tuple[int, int]:
    """The input size ``(H, W)`` in pixels a model is analysed at: a fixed-token-count
    backbone's crop, else its ``img_size``, the data preprocessor's ``size``, the config's
    ``crop_size``, else 512 x 512."""
    backbone = getattr(model, 'backbone', None)
    size = getattr(backbone, 'fixed_input_size', None) or getattr(backbone, 'img_size', None)
    if size is None:
        size = getattr(getattr(model, 'data_preprocessor', None), 'size', None)
    if size is None and cfg is not None:
        size = cfg.get('crop_size', None)
    if size is None:
        size = (512, 512)
    if isinstance(size, int):
        size = (size, size)
    return int(size[0]), int(size[1])


def check_shape_fits(model: nn.Module, shape: Tuple[int, int]) -> None:
    """Raise FixedTokenCountError-type UserError when a fixed-token-count model is asked to
    run at another size than its crop (``--shape`` of the analysis tools)."""
    backbone = reduction_backbone(model)
    crop = backbone.fixed_input_size if backbone is not None else None
    if crop is not None and tuple(shape) != tuple(crop):
        from ..errors import FixedTokenCountError
        raise FixedTokenCountError(f'this model has a fixed token count: it runs at its crop '
                                   f'{crop[0]}x{crop[1]}; --shape {shape[0]} {shape[1]} does '
                                   f'not apply')


def load_images(cfg: Config, num_images: int, shape: Sequence[int],
                split: str = 'test') -> List[dict]:
    """``num_images`` real images of the config's ``<split>_dataloader`` dataset, resized to
    exactly ``shape`` ``(H, W)`` with mmseg's transforms (repeated when there are fewer).

    Returns:
        list[dict]: packed samples (``inputs``: uint8 ``(3, H, W)`` BGR, ``data_samples``).

    Raises:
        UserError: no such dataset in the config, or its data are missing or empty.
    """
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    dataset_cfg = copy.deepcopy((cfg.get(f'{split}_dataloader') or {}).get('dataset'))
    if not dataset_cfg:
        raise UserError(f'the config has no {split}_dataloader.dataset to take images from')
    check_dataset(dataset_cfg, split)
    h, w = (int(v) for v in shape)
    dataset_cfg['pipeline'] = [dict(type='LoadImageFromFile'),
                               dict(type='Resize', scale=(w, h), keep_ratio=False),
                               dict(type='PackSegInputs')]
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    dataset = DATASETS.build(dataset_cfg)
    if len(dataset) == 0:
        raise UserError(f'the {split} dataset under {dataset_cfg.get("data_root")} has no images')
    return [dataset[i % len(dataset)] for i in range(int(num_images))]


def preprocess(model: nn.Module, samples: List[dict]) -> Tensor:
    """Normalise packed samples with the model's data pre-processor (test mode).

    Returns:
        Tensor: ``(len(samples), 3, H, W)`` float on the model's device.
    """
    data = dict(inputs=[s['inputs'] for s in samples],
                data_samples=[s['data_samples'] for s in samples])
    with torch.no_grad():
        return model.data_preprocessor(data, training=False)['inputs']


__all__ = ['load_config', 'segmentor_cfg', 'check_plain_vit', 'variant_cfg', 'build_segmentor',
           'load_segmentor', 'default_input_shape', 'check_shape_fits', 'load_images',
           'preprocess', 'VIT_TYPES']
