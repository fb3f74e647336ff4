"""Config adjustments and checks shared by ``tools/train.py`` and ``tools/test.py``."""
from typing import Optional, Tuple

import torch

from .preflight import UserError

#: MMEngine model wrappers that subclass DistributedDataParallel (take ``device_ids``)
DDP_WRAPPERS = ('MMDistributedDataParallel', 'DistributedDataParallel')


def prepare_cfg(cfg) -> None:
    """Adjust a loaded config to this machine, in place.

    Without a visible GPU (``nccl`` and DDP's ``device_ids`` need CUDA):

    * distributed backend ``gloo`` (``env_cfg.dist_cfg.backend``, created if absent);
    * for a distributed launcher, ``model_wrapper_cfg.device_ids=None`` (MMEngine passes
      ``device_ids=[LOCAL_RANK]``, which DDP refuses for a CPU module); a config without a
      ``model_wrapper_cfg`` gets MMEngine's default wrapper with that change.

    The launcher helpers' ``torch.cuda.set_device`` is skipped by :mod:`mmseg_pm.compat`.
    """
    if torch.cuda.is_available():
        return
    if cfg.get('env_cfg') is None:
        cfg.env_cfg = dict()
    if cfg.env_cfg.get('dist_cfg') is None:
        cfg.env_cfg.dist_cfg = dict()
    cfg.env_cfg.dist_cfg['backend'] = 'gloo'
    if cfg.get('launcher', 'none') == 'none':
        return
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False), device_ids=None)
    elif wrapper.get('type', 'MMDistributedDataParallel') in DDP_WRAPPERS:
        wrapper['device_ids'] = None


def check_loaded_structure(model, checkpoint: str) -> None:
    """Refuse to test a Prune-and-Merge model whose checkpoint carried no structure.

    A model built from a compressed config starts with identity units; if the checkpoint had
    no ``backbone.pm.*`` tensors it would silently run uncompressed.

    Raises:
        UserError: the model has Prune-and-Merge units but all are still the identity.
    """
    from mmseg_pm.models.backbones.prune_merge_vit import PruneMergeViT
    model = getattr(model, 'module', model)
    for m in model.modules():
        if isinstance(m, PruneMergeViT) and len(m.pm) and not m.is_compressed:
            raise UserError(
                f'{checkpoint} carries no Prune-and-Merge structure (no backbone.pm.* '
                f'tensors), so this compressed config would run uncompressed. Test an '
                f'uncompressed checkpoint with its baseline config, or compress it first '
                f'(tools/pm_compress.py or tools/train.py with the pm_ config).')


def _compressed_backbone(model):
    """(segmentor, its compressed PruneMergeViT) inside a (DDP / TTA-wrapped) model, or None."""
    from mmseg_pm.models.backbones.prune_merge_vit import PruneMergeViT
    while hasattr(model, 'module'):  # DDP -> SegTTAModel -> segmentor
        model = model.module
    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, PruneMergeViT) and len(backbone.pm) and backbone.is_compressed:
        return model, backbone
    return None


def max_pipeline_size(pipeline) -> Optional[Tuple[int, int]]:
    """Largest ``(H, W)`` a test pipeline can produce, or None when it is not bounded.

    Only a ``Resize`` with a fixed ``scale`` bounds it: ``keep_ratio=False`` gives exactly
    ``scale = (w, h)``; ``keep_ratio=True`` fits the long side into ``max(scale)``. Random or
    scale-factor resizes and test-time augmentation count as unbounded.
    """
    bound = None
    for t in pipeline or []:
        kind = t.get('type', '') if isinstance(t, dict) else type(t).__name__
        if kind == 'Resize':
            scale = t.get('scale')
            if scale is None or t.get('scale_factor') is not None:
                bound = None
            elif isinstance(scale, int):
                bound = (scale, scale) if not t.get('keep_ratio') else None
            elif t.get('keep_ratio'):
                bound = (max(scale), max(scale))
            else:
                bound = (int(scale[1]), int(scale[0]))
        elif 'Resize' in kind or kind == 'TestTimeAug':
            bound = None
    return bound


def check_inference_fits_structure(model, pipeline) -> None:
    """Refuse test settings that would feed a compressed model inputs larger than its crop.

    A compressed ``PruneMergeViT`` has a fixed token count: it pads smaller inputs to the crop
    its structure was built for and raises ``ValueError`` for larger ones in the middle of the
    test loop. Slide inference needs ``crop_size <=`` that crop; whole-image inference needs a
    test pipeline that bounds the image size (:func:`max_pipeline_size`) by it.

    Raises:
        UserError: the settings and the structure's crop, with the options that fix it.
    """
    found = _compressed_backbone(model)
    if found is None:
        return
    segmentor, backbone = found
    crop = tuple(g * backbone.patch_size for g in backbone.structure_grid)
    check_test_cfg_fits(crop, getattr(segmentor, 'test_cfg', None), pipeline,
                        'this compressed model\'s Prune-and-Merge structure was built for')


def check_val_cfg_fits(cfg) -> None:
    """:func:`check_inference_fits_structure` for the validation of a training run that
    compresses (``PMCompressHook``): checked on the config before training starts, so a bad
    ``test_cfg`` does not stop the run at its first validation.

    Raises:
        UserError: see :func:`check_test_cfg_fits`.
    """
    model = cfg.get('model') or {}
    backbone = model.get('backbone') or {}
    hooks = [h.get('type') for h in cfg.get('custom_hooks') or [] if isinstance(h, dict)]
    if (backbone.get('type') != 'PruneMergeViT' or not backbone.get('pm_cfg')
            or 'PMCompressHook' not in hooks or not cfg.get('val_dataloader')
            or not cfg.get('val_cfg')):
        return
    size = backbone.get('img_size', 224)
    crop = (size, size) if isinstance(size, int) else tuple(size)
    check_test_cfg_fits(crop, model.get('test_cfg'),
                        (cfg.val_dataloader.get('dataset') or {}).get('pipeline'),
                        'the Prune-and-Merge structure will be built for (backbone img_size)')


def check_test_cfg_fits(crop, test_cfg, pipeline, what: str) -> None:
    """Raise UserError unless inference with ``test_cfg`` only feeds inputs within ``crop``.

    Args:
        crop (tuple[int, int]): ``(H, W)`` of the structure.
        test_cfg (dict | None): the segmentor's ``test_cfg`` (``mode``, ``crop_size``).
        pipeline (list | None): the test pipeline (bounds whole-image inputs).
        what (str): how the message names ``crop``.
    """
    ch, cw = (int(v) for v in crop)
    test_cfg = dict(test_cfg or {})
    mode = test_cfg.get('mode', 'whole')
    fix = (f'use slide inference with that crop: --cfg-options model.test_cfg.mode=slide '
           f'"model.test_cfg.crop_size=({ch},{cw})" '
           f'"model.test_cfg.stride=({ch * 15 // 16},{cw * 15 // 16})"')
    if mode == 'slide':
        c = test_cfg.get('crop_size')
        if c is None or int(c[0]) > ch or int(c[1]) > cw:
            raise UserError(f'test_cfg.crop_size={tuple(c) if c else None} is larger than the '
                            f'{ch}x{cw} crop {what} (fixed token count); {fix}')
        return
    bound = max_pipeline_size(pipeline)
    if bound is None or bound[0] > ch or bound[1] > cw:
        size = 'of any size' if bound is None else f'up to {bound[0]}x{bound[1]}'
        raise UserError(f'test_cfg.mode={mode!r} feeds whole images ({size} after the test '
                        f'pipeline) to a model with a fixed token count for the {ch}x{cw} '
                        f'crop {what}; {fix}')


def is_fixed_token_count_error(e: BaseException) -> bool:
    """True for the ``ValueError`` a compressed backbone raises for inputs above its crop."""
    return isinstance(e, ValueError) and 'slide inference' in str(e) and \
        'compression structure' in str(e)
