"""Checkpoint converters: timm / Segmenter / official Prune-and-Merge layouts -> mmseg keys, the
pretrained-weight loader of the token-reduction backbones and the strict checkpoint-vs-model
check. Pure dict-to-dict functions, one module per source format (timm's ``_convert_*`` /
``checkpoint_filter_fn`` pattern):

* :mod:`.formats`: reading, unwrapping and recognising checkpoints, :class:`ConversionReport`;
* :mod:`.timm`: timm ViT / DeiT / AugReg / MAE -> mmseg ``VisionTransformer``;
* :mod:`.segmenter`: rstrudel/segmenter -> mmseg ``EncoderDecoder``;
* :mod:`.pm_official`: official Prune-and-Merge (pm-vit, PM-Segmenter) -> dense units;
* :mod:`.pretrained`: ``init_cfg=dict(type='Pretrained')`` of the backbones;
* :mod:`.fit`: the strict key / shape check of a checkpoint against a model;
* :mod:`.cli`: the shared ``main`` of ``tools/model_converters/*.py``.
"""
from .fit import check_checkpoint_fits, diff_state_dict, fitting_state_dict
from .formats import (FORMATS, ConversionReport, detect_format, patch_size_of, read_checkpoint,
                      split_blocks, unwrap_checkpoint, wrong_format_message)
from .pm_official import convert_pm_official, pm_structure_from_state_dict
from .pretrained import load_pretrained_backbone
from .segmenter import convert_segmenter
from .timm import convert_timm_vit, describe_vit, resample_pos_embed

__all__ = [
    'FORMATS', 'ConversionReport', 'wrong_format_message', 'unwrap_checkpoint',
    'read_checkpoint', 'detect_format', 'patch_size_of', 'split_blocks', 'resample_pos_embed',
    'describe_vit', 'convert_timm_vit', 'convert_segmenter', 'convert_pm_official',
    'pm_structure_from_state_dict', 'load_pretrained_backbone', 'check_checkpoint_fits',
    'fitting_state_dict', 'diff_state_dict'
]
