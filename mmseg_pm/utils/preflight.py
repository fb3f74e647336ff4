"""Checks run by ``tools/*.py`` before heavy work, so bad input stops with one clear line.

Files, data and config settings only (no model code). Every check raises an
:class:`mmseg_pm.errors.UserError` subclass with an actionable message;
:func:`mmseg_pm.utils.cli.run_cli` prints it as ``error: <message>`` and exits with code 2.
"""
import os
import os.path as osp
from typing import Optional, Tuple

from ..errors import CheckpointReadError, DataError, FixedTokenCountError, UserError

IMG_EXTS = ('.jpg', '.jpeg', '.png')

#: local weight files referenced by the shipped configs: where they come from
KNOWN_CHECKPOINTS = {
    'vit_tiny_p16_384_20220308-cce8c795.pth':
    'AugReg ImageNet-21k ViT-T/16@384 converted by mmseg (the weights of mmseg\'s Segmenter '
    'ViT-T config); download https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/'
    'segmenter/vit_tiny_p16_384_20220308-cce8c795.pth',
    'vit_small_p16_384_20220308-410f6037.pth':
    'AugReg ImageNet-21k ViT-S/16@384 converted by mmseg (the weights of mmseg\'s Segmenter '
    'ViT-S config); download https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/'
    'segmenter/vit_small_p16_384_20220308-410f6037.pth',
    'vit_base_p16_384_20220308-96dfe169.pth':
    'AugReg ImageNet-21k ViT-B/16@384 converted by mmseg; download '
    'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segmenter/'
    'vit_base_p16_384_20220308-96dfe169.pth',
    'vit_large_p16_384_20220308-d4efb41d.pth':
    'AugReg ImageNet-21k ViT-L/16@384 converted by mmseg; download '
    'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segmenter/'
    'vit_large_p16_384_20220308-d4efb41d.pth',
}
for _size, _name in (
        ('t', 'segmenter_vit-t_mask_8x1_512x512_160k_ade20k_20220105_151706-ffcf7509'),
        ('s', 'segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103'),
        ('b', 'segmenter_vit-b_mask_8x1_512x512_160k_ade20k_20220105_151706-bc533b08'),
        ('l', 'segmenter_vit-l_mask_8x1_512x512_160k_ade20k_20220105_162750-7ef345be')):
    KNOWN_CHECKPOINTS[_name + '.pth'] = (
        f'trained uncompressed Segmenter-Mask ViT-{_size.upper()}/16 of mmseg\'s model zoo '
        f'(ADE20K); download https://download.openmmlab.com/mmsegmentation/v0.5/segmenter/'
        f'{_name.rsplit("_", 2)[0]}/{_name}.pth (or train it with the baseline config '
        f'segmenter_vit-{_size}_ade20k*.py and pass --cfg-options load_from=<its checkpoint>)')


def _describe(path: str) -> str:
    name = osp.basename(path)
    if name in KNOWN_CHECKPOINTS:
        return f' It is the {KNOWN_CHECKPOINTS[name]} and place it at {path}.'
    return ''


def check_config_path(path: str) -> None:
    """Raise UserError unless ``path`` is an existing file."""
    if not osp.isfile(path):
        raise UserError(f'config file not found: {path} (looked in {osp.abspath(path)})')


def read_config(path: str, cfg_options: Optional[dict] = None):
    """Read an MMEngine config file and apply ``--cfg-options`` overrides.

    A ``data_root=...`` override is applied to the train / val / test dataloaders too (the
    top-level ``data_root`` variable is substituted when the file is read, so overriding it
    alone would change nothing).

    Raises:
        UserError: the file is missing, empty, or does not parse (file and reason named).
    """
    from mmengine.config import Config
    check_config_path(path)
    try:
        cfg = Config.fromfile(path)
    except Exception as e:  # noqa: BLE001  (any parse error of a user file: name it)
        line = getattr(e, 'lineno', None)
        where = f'{osp.abspath(path)}' + (f', line {line}' if line else '')
        raise UserError(f'cannot read config {where}: {type(e).__name__}: '
                        f'{str(e).splitlines()[0] if str(e) else ""}') from None
    if not cfg.get('model'):
        raise UserError(f'config {osp.abspath(path)} defines no model (empty or not an mmseg '
                        f'config?)')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
        if 'data_root' in cfg_options:
            set_data_root(cfg, cfg_options['data_root'])
    return cfg


def set_data_root(cfg, root: str) -> None:
    """Point the train / val / test datasets (also inside dataset wrappers) at ``root``."""
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        dataset = loader.get('dataset') if loader else None
        while dataset is not None and 'dataset' in dataset and 'data_root' not in dataset:
            dataset = dataset['dataset']
        if dataset is not None:
            dataset['data_root'] = root
    cfg.data_root = root


def check_checkpoint(path: str, what: str, hint: str = '') -> None:
    """Raise UserError if the local checkpoint ``path`` is missing or a URL."""
    if path.startswith(('http://', 'https://')):
        raise UserError(f'{what} is a URL ({path}); mmseg_pm does not download at run time. '
                        f'Download it, place it under checkpoints/ and give the local path.'
                        f'{hint}')
    if not osp.isfile(path):
        raise UserError(f'{what} not found: {path} (looked in {osp.abspath(path)}).'
                        f'{_describe(path)}{hint}')
    check_checkpoint_readable(path, what)


#: first bytes of a legacy (non-zip) ``torch.save`` file: a pickle protocol 2+ header
_PICKLE_MAGIC = (b'\x80\x02', b'\x80\x03', b'\x80\x04', b'\x80\x05')


def check_checkpoint_readable(path: str, what: str = 'checkpoint') -> None:
    """Cheap integrity check of a local checkpoint, without loading it.

    ``torch.save`` writes a zip archive whose directory sits at the end of the file, so a
    truncated copy (an interrupted download, copy or save) has none. Legacy (pre-1.6, pickle)
    files cannot be checked this way; :func:`mmseg_pm.compat.load_local_checkpoint` still turns
    their read errors into one line.

    Raises:
        CheckpointReadError: the file is empty, a truncated zip archive, or neither zip nor pickle.
    """
    import zipfile
    size = osp.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(b'PK'):
        if zipfile.is_zipfile(path):
            return
        reason = 'a zip archive without its directory: the file is truncated'
    elif head[:2] in _PICKLE_MAGIC:
        return
    elif size == 0:
        reason = 'the file is empty'
    else:
        reason = 'not a PyTorch checkpoint (neither a zip archive nor a pickle)'
    raise CheckpointReadError(f'cannot read {what} {osp.abspath(path)} ({size} bytes): {reason}. '
                              f'Copy it again (an interrupted download, copy or save?) or use '
                              f'another checkpoint')


def pretrained_paths(cfg):
    """Local paths of ImageNet-pretrained weights in a model config (pretrained / init_cfg)."""
    model = cfg.get('model', {})
    if model.get('type') == 'SegTTAModel':
        model = model.get('module', {})
    paths = []
    if model.get('pretrained'):
        paths.append(('model.pretrained', model['pretrained']))
    for key in ('backbone',):
        init_cfg = (model.get(key) or {}).get('init_cfg') or {}
        if isinstance(init_cfg, dict) and init_cfg.get('checkpoint'):
            paths.append((f'model.{key}.init_cfg.checkpoint', init_cfg['checkpoint']))
    return paths


def check_dataset(dataset_cfg: dict, split: str) -> None:
    """Raise UserError if the dataset's data root or image folder is missing or empty, or if
    one of its first annotations is unusable (:func:`check_annotations`)."""
    if dataset_cfg is None:
        return
    if 'dataset' in dataset_cfg and 'data_root' not in dataset_cfg:  # wrappers
        return check_dataset(dataset_cfg['dataset'], split)
    root = dataset_cfg.get('data_root', '')
    hint = (' Prepare ADE20K as in README "Data preparation", or use the 38-image sample: '
            'python tools/dataset_converters/prepare_ade20k_sample.py, then the configs under '
            'configs/demo/.')
    if root and not osp.isdir(root):
        raise DataError(f'{split} data root not found: {root} (looked in '
                        f'{osp.abspath(root)}).{hint}')
    img_dir = osp.join(root, (dataset_cfg.get('data_prefix') or {}).get('img_path', ''))
    if not osp.isdir(img_dir):
        raise DataError(f'{split} image folder not found: {img_dir}.{hint}')
    if not any(f.lower().endswith(IMG_EXTS) for f in os.listdir(img_dir)):
        raise DataError(f'{split} image folder is empty: {img_dir} (no {"/".join(IMG_EXTS)} '
                        f'files).{hint}')
    check_annotations(dataset_cfg, split)


#: annotation files opened per split by :func:`check_annotations` (first ones, sorted by name)
NUM_CHECKED_ANNOTATIONS = 3


def _dataset_defaults(dataset_cfg: dict) -> dict:
    """``img_suffix``, ``seg_map_suffix``, ``reduce_zero_label`` and the number of classes of
    the dataset, from the config, else the dataset class's defaults (None where unknown)."""
    import inspect
    out = dict(img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False,
               num_classes=None)
    try:
        from mmseg.registry import DATASETS
        cls = DATASETS.get(dataset_cfg.get('type', ''))
    except Exception:  # pragma: no cover  (registry not importable)
        cls = None
    if cls is not None:
        params = inspect.signature(cls.__init__).parameters
        for key in ('img_suffix', 'seg_map_suffix', 'reduce_zero_label'):
            if key in params and params[key].default is not inspect.Parameter.empty:
                out[key] = params[key].default
        classes = getattr(cls, 'METAINFO', {}).get('classes')
        out['num_classes'] = len(classes) if classes else None
    for key in ('img_suffix', 'seg_map_suffix', 'reduce_zero_label'):
        if dataset_cfg.get(key) is not None:
            out[key] = dataset_cfg[key]
    classes = (dataset_cfg.get('metainfo') or {}).get('classes')
    if classes:
        out['num_classes'] = len(classes)
    for t in dataset_cfg.get('pipeline') or []:  # mmseg 1.x still reads it from the pipeline
        if isinstance(t, dict) and t.get('type') == 'LoadAnnotations' and \
                t.get('reduce_zero_label') is not None:
            out['reduce_zero_label'] = t['reduce_zero_label']
    return out


def check_annotations(dataset_cfg: dict, split: str,
                      num: int = NUM_CHECKED_ANNOTATIONS) -> None:
    """Open the annotations of the first ``num`` images (sorted by name) and check them.

    A cheap guard against a wrongly converted dataset (RGB-coloured or 16-bit masks, labels
    beyond the classes, masks of another size), which would otherwise fail deep inside the
    loss or train on garbage. Each annotation must be a 2-D ``uint8`` image (a grey-scale or
    palette PNG) of the image's size, with labels ``<= num_classes`` (``reduce_zero_label``,
    as ADE20K: 0 = unlabeled, 1..150) or ``< num_classes`` (otherwise); 255 (ignore) is always
    allowed. Skipped when the config has no ``seg_map_path`` or uses an ``ann_file`` list.

    Raises:
        UserError: a missing or unusable annotation file, named with the reason.
    """
    prefix = dataset_cfg.get('data_prefix') or {}
    if not prefix.get('seg_map_path') or dataset_cfg.get('ann_file'):
        return
    import numpy as np
    from PIL import Image
    root = dataset_cfg.get('data_root', '')
    img_dir = osp.join(root, prefix.get('img_path', ''))
    ann_dir = osp.join(root, prefix['seg_map_path'])
    info = _dataset_defaults(dataset_cfg)
    img_suffix, seg_suffix = info['img_suffix'], info['seg_map_suffix']
    names = sorted(f for f in os.listdir(img_dir) if f.endswith(img_suffix))[:num]
    for name in names:
        ann = osp.join(ann_dir, name[:-len(img_suffix)] + seg_suffix)
        if not osp.isfile(ann):
            raise DataError(f'{split} annotation not found for image {osp.join(img_dir, name)}: '
                            f'expected {ann} (data_prefix.seg_map_path = '
                            f'{prefix["seg_map_path"]!r}, seg_map_suffix = {seg_suffix!r})')
        try:
            with Image.open(ann) as im:
                label = np.asarray(im)
            with Image.open(osp.join(img_dir, name)) as im:
                img_w, img_h = im.size
        except OSError as e:
            raise DataError(f'cannot read {split} annotation {ann} or its image: {e}')
        if label.ndim != 2 or label.dtype != np.uint8:
            raise DataError(
                f'{split} annotation {ann} is a {label.dtype} array of shape '
                f'{tuple(label.shape)}; expected a 2-D uint8 label map (a grey-scale or palette '
                f'PNG of class indices, not a colour-coded or 16-bit image)')
        if label.shape != (img_h, img_w):
            raise DataError(f'{split} annotation {ann} is {label.shape[1]}x{label.shape[0]} '
                            f'(WxH) but its image is {img_w}x{img_h}; they must be equal')
        if info['num_classes']:
            top = info['num_classes'] if info['reduce_zero_label'] else info['num_classes'] - 1
            values = np.unique(label)
            bad = values[(values > top) & (values != 255)]
            if bad.size:
                raise DataError(
                    f'{split} annotation {ann} has labels {bad[:5].tolist()} above {top}: '
                    f'{info["num_classes"]} classes'
                    + (' with reduce_zero_label (0 = unlabeled, 1..N = classes)'
                       if info['reduce_zero_label'] else ' (0..N-1)')
                    + ', 255 = ignore. Convert the annotations to class indices')


def check_train(cfg) -> None:
    """Pre-flight for tools/train.py: pretrained weights, load_from, training/val data."""
    hint = ' To train from random initialisation instead: --cfg-options model.pretrained=None'
    if not cfg.get('resume') and not cfg.get('load_from'):
        for what, path in pretrained_paths(cfg):
            check_checkpoint(path, f'pretrained weights ({what})', hint)
    if cfg.get('load_from') and not cfg.get('resume'):
        check_checkpoint(cfg.load_from, 'load_from checkpoint')
    check_dataset(cfg.get('train_dataloader', {}).get('dataset'), 'train')
    if cfg.get('val_dataloader') and cfg.get('val_cfg'):
        check_dataset(cfg.val_dataloader.get('dataset'), 'val')


def check_test(cfg, checkpoint: str) -> None:
    """Pre-flight for tools/test.py: the checkpoint and the test data."""
    check_checkpoint(checkpoint, 'checkpoint')
    check_dataset(cfg.get('test_dataloader', {}).get('dataset'), 'test')


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


def check_inference_size(grid, patch_size: int, test_cfg, pipeline, what: str) -> None:
    """Refuse test settings that would feed a fixed-token-count model inputs larger than its
    crop (it pads smaller inputs; a larger one would stop the test loop midway).

    Slide inference needs ``crop_size <=`` the crop; whole-image inference needs a test
    pipeline that bounds the image size by it (:func:`max_pipeline_size`).

    Args:
        grid (tuple[int, int]): patch grid ``(H_g, W_g)`` of the model's crop.
        patch_size (int): pixels per patch.
        test_cfg (dict | None): the segmentor's ``test_cfg`` (``mode``, ``crop_size``).
        pipeline (list | None): the test pipeline (bounds whole-image inputs).
        what (str): how the message names the crop.

    Raises:
        FixedTokenCountError: the settings and the crop, with the options that fix it.
    """
    ch, cw = (int(g) * patch_size for g in grid)
    test_cfg = dict(test_cfg or {})
    mode = test_cfg.get('mode', 'whole')
    fix = (f'use slide inference with that crop: --cfg-options model.test_cfg.mode=slide '
           f'"model.test_cfg.crop_size=({ch},{cw})" '
           f'"model.test_cfg.stride=({ch * 15 // 16},{cw * 15 // 16})"')
    if mode == 'slide':
        c = test_cfg.get('crop_size')
        if c is None or int(c[0]) > ch or int(c[1]) > cw:
            raise FixedTokenCountError(f'test_cfg.crop_size={tuple(c) if c else None} is larger '
                                       f'than the {ch}x{cw} crop {what} (fixed token count); {fix}')
        return
    bound = max_pipeline_size(pipeline)
    if bound is None or bound[0] > ch or bound[1] > cw:
        size = 'of any size' if bound is None else f'up to {bound[0]}x{bound[1]}'
        raise FixedTokenCountError(f'test_cfg.mode={mode!r} feeds whole images ({size} after the '
                                   f'test pipeline) to a model with a fixed token count for the '
                                   f'{ch}x{cw} crop {what}; {fix}')
