"""Checks run by ``tools/*.py`` before MMEngine starts, so bad input stops with one clear line.

Every check raises :class:`UserError` with an actionable message; :func:`run_cli` turns it
(and the library's other user-facing errors) into ``error: <message>`` on stderr and exit code 2.
"""
import os
import os.path as osp
import sys
from typing import Callable, Optional

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
for _size, _name in (('t', 'segmenter_vit-t_mask_8x1_512x512_160k_ade20k_20220105_151706-ffcf7509'),
                     ('s', 'segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103'),
                     ('b', 'segmenter_vit-b_mask_8x1_512x512_160k_ade20k_20220105_151706-bc533b08'),
                     ('l', 'segmenter_vit-l_mask_8x1_512x512_160k_ade20k_20220105_162750-7ef345be')):
    KNOWN_CHECKPOINTS[_name + '.pth'] = (
        f'trained uncompressed Segmenter-Mask ViT-{_size.upper()}/16 of mmseg\'s model zoo '
        f'(ADE20K); download https://download.openmmlab.com/mmsegmentation/v0.5/segmenter/'
        f'{_name.rsplit("_", 2)[0]}/{_name}.pth (or train it with the baseline config '
        f'segmenter_vit-{_size}_ade20k*.py and pass --cfg-options load_from=<its checkpoint>)')


class UserError(Exception):
    """Bad input from the user (missing file, wrong option): printed as one line."""


def _describe(path: str) -> str:
    name = osp.basename(path)
    if name in KNOWN_CHECKPOINTS:
        return f' It is the {KNOWN_CHECKPOINTS[name]} and place it at {path}.'
    return ''


def check_config_path(path: str) -> None:
    if not osp.isfile(path):
        raise UserError(f'config file not found: {path} (looked in {osp.abspath(path)})')


def check_checkpoint(path: str, what: str, hint: str = '') -> None:
    """Raise UserError if the local checkpoint ``path`` is missing or a URL."""
    if path.startswith(('http://', 'https://')):
        raise UserError(f'{what} is a URL ({path}); mmseg_pm does not download at run time. '
                        f'Download it, place it under checkpoints/ and give the local path.'
                        f'{hint}')
    if not osp.isfile(path):
        raise UserError(f'{what} not found: {path} (looked in {osp.abspath(path)}).'
                        f'{_describe(path)}{hint}')


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
    """Raise UserError if the dataset's data root or image folder is missing or empty."""
    if dataset_cfg is None:
        return
    if 'dataset' in dataset_cfg and 'data_root' not in dataset_cfg:  # wrappers
        return check_dataset(dataset_cfg['dataset'], split)
    root = dataset_cfg.get('data_root', '')
    hint = (' Prepare ADE20K as in README "Data preparation", or use the 38-image sample: '
            'python tools/prepare_ade20k_sample.py, then the configs under configs/demo/.')
    if root and not osp.isdir(root):
        raise UserError(f'{split} data root not found: {root} (looked in '
                        f'{osp.abspath(root)}).{hint}')
    img_dir = osp.join(root, (dataset_cfg.get('data_prefix') or {}).get('img_path', ''))
    if not osp.isdir(img_dir):
        raise UserError(f'{split} image folder not found: {img_dir}.{hint}')
    if not any(f.lower().endswith(IMG_EXTS) for f in os.listdir(img_dir)):
        raise UserError(f'{split} image folder is empty: {img_dir} (no {"/".join(IMG_EXTS)} '
                        f'files).{hint}')


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


def run_cli(main: Callable[[], Optional[int]]) -> None:
    """Run a tool's ``main``; user-facing errors become one line on stderr and exit code 2."""
    from mmseg_pm.models.utils.prune_merge import PMConfigError, PMStructureError
    try:
        code = main()
    except (UserError, FileNotFoundError, PMStructureError, PMConfigError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
