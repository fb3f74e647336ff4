"""Checks of a whole training or test run, before MMEngine writes anything.

``tools/train.py`` and ``tools/test.py`` call :func:`check_train_run` / :func:`check_test_run`
after the config is read and before the ``Runner`` exists, so that a bad setting, a checkpoint
of another architecture or unusable data stops with one ``error: ...`` line and leaves no log
folder behind. The model is built once on the CPU (no weights initialised) to validate every
model setting; checkpoints are read to check their tensors against it.
"""
import copy
import os.path as osp

import torch
from mmengine.config import Config

from ..compat import load_local_checkpoint
from ..converters.fit import fitting_state_dict
from ..datasets import insert_label_check
from ..errors import ConfigError, UserError
from ..models.backbones import reduction_backbone
from ..utils.cli import check_writable_dir
from ..utils.preflight import check_inference_size, check_test, check_train


def build_model(cfg: Config):
    """The config's segmentor, built on the CPU without initialising weights.

    Raises:
        ConfigError: a setting the model refuses (token reduction, pm_cfg, ...).
        UserError: the model cannot be built from the config (the reason named).
    """
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model_cfg = cfg.model.module if cfg.model.get('type') == 'SegTTAModel' else cfg.model
    try:
        # a copy: mmseg's EncoderDecoder moves ``pretrained`` into the backbone config it
        # is given, and the Runner builds the model again from cfg.model
        return MODELS.build(copy.deepcopy(model_cfg))
    except (ConfigError, UserError):
        raise
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise UserError(f'cannot build the model of the config: {type(e).__name__}: '
                        f'{str(e).splitlines()[0] if str(e) else ""}') from None


def check_hooks(cfg: Config, model) -> None:
    """Build the config's custom hooks (their settings are validated when built) and resolve
    ``PMCompressHook``'s compression settings against the backbone's ``pm_cfg``; with such a
    hook, the validation settings must fit the crop the structure will be built for.

    Raises:
        ConfigError: bad hook settings.
        FixedTokenCountError: validation inputs larger than the structure's crop.
    """
    from mmseg.registry import HOOKS
    from .hooks import PMCompressHook
    for hook_cfg in cfg.get('custom_hooks') or []:
        hook = HOOKS.build(dict(hook_cfg)) if isinstance(hook_cfg, dict) else hook_cfg
        if isinstance(hook, PMCompressHook):
            hook.resolve_settings(model.backbone)
            check_val_fits_structure(cfg, model.backbone)


def check_val_fits_structure(cfg: Config, backbone) -> None:
    """With a validation loop, refuse validation inputs larger than the crop a
    Prune-and-Merge structure is built for (``PMCompressHook.before_train`` checks the same
    once the Runner runs; this stops before anything is written).

    Raises:
        FixedTokenCountError: the settings and the crop, with the options that fix it.
    """
    if not (cfg.get('val_dataloader') and cfg.get('val_cfg') and cfg.get('val_evaluator')):
        return
    check_inference_size(backbone.grid_size, backbone.patch_size, cfg.model.get('test_cfg'),
                         cfg.val_dataloader.dataset.get('pipeline'),
                         'the Prune-and-Merge structure is built for')


def add_label_checks(cfg: Config, model) -> None:
    """Insert ``CheckLabelRange`` after every ``LoadAnnotations`` of the train / val / test
    pipelines (the decode head's ``num_classes`` bounds the labels)."""
    num_classes = getattr(getattr(model, 'decode_head', None), 'num_classes', None)
    if not num_classes:
        return
    for split in ('train', 'val', 'test'):
        dataset = (cfg.get(f'{split}_dataloader') or {}).get('dataset')
        while dataset is not None and 'pipeline' not in dataset and 'dataset' in dataset:
            dataset = dataset['dataset']
        if dataset is not None:
            insert_label_check(dataset.get('pipeline'), num_classes)
    if cfg.get('tta_pipeline'):
        insert_label_check(cfg.tta_pipeline, num_classes)


def _read_state_dict(path: str) -> dict:
    ckpt = load_local_checkpoint(path, map_location='cpu')
    return ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt


def check_train_run(cfg: Config):
    """Everything ``tools/train.py`` can check before the Runner starts.

    Files and data (pretrained weights, ``load_from``, datasets and their first annotations),
    the work directory, the model and hook settings, ``load_from`` against the model (strict:
    MMEngine would load it with ``strict=False``), something to resume with ``--resume``, and
    AMP without a GPU. Adds the label-range check to the pipelines.

    Returns:
        nn.Module: the config's model, built on the CPU; holding the ``load_from`` weights when
        there is a ``load_from`` (and no ``--resume``), else not initialised.

    Raises:
        UserError: the first problem found, in one line.
    """
    check_writable_dir(cfg.work_dir, 'work directory')
    if cfg.get('resume'):
        last = osp.join(cfg.work_dir, 'last_checkpoint')
        if not cfg.get('load_from') and not osp.isfile(last):
            raise UserError(f'--resume: nothing to resume in {osp.abspath(cfg.work_dir)} (no '
                            f'last_checkpoint): give the work dir of the interrupted run, or '
                            f'start without --resume')
    if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper' and \
            not torch.cuda.is_available():
        raise UserError('--amp / AmpOptimWrapper needs a GPU (MMEngine 0.10 runs AMP training '
                        'on CUDA only); train without --amp on this machine')
    check_train(cfg)
    model = build_model(cfg)
    check_hooks(cfg, model)
    if cfg.get('load_from') and not cfg.get('resume'):
        source = f'load_from {cfg.load_from}'
        model.load_state_dict(fitting_state_dict(model, _read_state_dict(cfg.load_from), source),
                              strict=True)
    add_label_checks(cfg, model)
    return model


def check_compress_run(cfg: Config, hook_settings: dict, overrides: dict):
    """Everything ``tools/pm_compress.py`` can check before the Runner starts:
    :func:`check_train_run` (``load_from`` = the checkpoint to compress), a Prune-and-Merge
    backbone, the compression settings (hook arguments, deprecated ``pm_cfg`` keys, command
    line), a checkpoint that is not compressed yet and, when it evaluates, validation settings
    that fit the structure's crop.

    Returns:
        CompressSettings: the resolved settings.

    Raises:
        UserError: the first problem found, in one line.
    """
    from ..compression import CompressSettings, pm_backbone
    model = check_train_run(cfg)
    backbone = pm_backbone(model)
    settings = CompressSettings.resolve(hook_settings, backbone.compress_cfg, overrides)
    if backbone.is_compressed:
        raise UserError(f'{cfg.load_from} is already compressed (it carries a Prune-and-Merge '
                        f'structure): give the uncompressed checkpoint')
    check_val_fits_structure(cfg, backbone)
    return settings


def check_test_run(cfg: Config, checkpoint: str, out_dirs=()) -> None:
    """Everything ``tools/test.py`` can check before the Runner starts.

    The checkpoint (readable; its tensors fit the model strictly, so a compressed checkpoint
    never runs silently uncompressed in a baseline config, nor the reverse), the test data,
    the output directories, and for a fixed-token-count model the test settings against its
    crop. Adds the label-range check to the pipelines.

    Raises:
        UserError: the first problem found, in one line.
    """
    for path, what in out_dirs:
        if path:
            check_writable_dir(path, what)
    check_test(cfg, checkpoint)
    model = build_model(cfg)
    state = fitting_state_dict(model, _read_state_dict(checkpoint), checkpoint)
    backbone = reduction_backbone(model)
    if backbone is not None and getattr(backbone, 'pm', None) is not None:
        model.load_state_dict(state, strict=True)  # installs the structure to inspect it
        if not backbone.is_compressed:
            raise UserError(f'{checkpoint} carries no Prune-and-Merge structure (no '
                            f'backbone.pm.* tensors), so this compressed config would run '
                            f'uncompressed: test it with its baseline config, or compress it '
                            f'first (tools/pm_compress.py or tools/train.py with the pm_ config)')
    fixed = backbone.fixed_input_size if backbone is not None else None
    if fixed is not None:
        check_inference_size(backbone.grid_size, backbone.patch_size,
                             cfg.model.get('test_cfg'),
                             cfg.test_dataloader.dataset.get('pipeline'),
                             'the checkpoint\'s structure was built for')
    add_label_checks(cfg, model)


__all__ = ['build_model', 'check_hooks', 'check_val_fits_structure', 'add_label_checks',
           'check_train_run', 'check_compress_run', 'check_test_run']
