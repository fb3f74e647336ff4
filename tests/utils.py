"""Helpers of the test suite: running the tools, the one-line error contract, small models,
checkpoints and copies of the ADE20K sample.

Import them as ``from tests.utils import ...`` (``tests`` is a package: mmsegmentation installs
a top-level ``tests`` package into site-packages, which would shadow a namespace package).
Fixtures live in the ``conftest.py`` files.
"""
import io
import multiprocessing
import os
import os.path as osp
import runpy
import shutil
import subprocess
import sys
import tempfile
import warnings
from typing import List, Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SAMPLE = os.environ.get('MMSEG_PM_SAMPLE',
                        osp.join(osp.dirname(REPO), 'shared', 'data', 'ade20k_sample'))
#: the smallest Prune-and-Merge config (ViT-T, 256 px crops, 2 scoring + 2 training iterations)
DEMO = 'configs/demo/pm_segmenter_vit-t_ade20k-sample-256.py'
#: its uncompressed twin (Segmenter ViT-T at 256 px, random initialisation), a test config
BASELINE = 'tests/data/configs/segmenter_vit-t_ade20k-sample-256.py'

# --------------------------------------------------------------------------------------------
# running the tools
# --------------------------------------------------------------------------------------------
#: modules a tool imports anyway; the fork server of :func:`run_tool_forked` imports them once
PRELOAD = ['mmseg_pm', 'mmseg_pm.engine.preflight', 'mmseg_pm.analysis', 'mmseg_pm.compression',
           'mmengine.runner', 'mmseg.apis', 'mmseg.datasets', 'mmseg.models']


def run_tool(*args, check: bool = True, env: Optional[dict] = None, cwd: str = REPO,
             timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``python <args>`` (a tool path first) in a fresh interpreter, as a user would.

    Returns:
        CompletedProcess: with text ``stdout`` / ``stderr``.

    Raises:
        AssertionError: ``check`` and a non-zero exit code (the output tails shown).
    """
    e = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=e, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n'
                             f'{proc.stderr[-4000:]}')
    return proc


_FORK_CONTEXT = None


def _fork_context():
    global _FORK_CONTEXT
    if _FORK_CONTEXT is None:
        ctx = multiprocessing.get_context('forkserver')
        ctx.set_forkserver_preload(PRELOAD)
        _FORK_CONTEXT = ctx
    return _FORK_CONTEXT


def _tool_child(script: str, args: List[str], cwd: str, env: dict, out: str, err: str) -> None:
    """Body of a forked tool run: the process's own stdout / stderr (fds 1 and 2) go to files,
    then the script runs as ``__main__`` (its ``sys.exit`` code is the process's)."""
    os.chdir(cwd)
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = io.TextIOWrapper(open(1, 'wb', closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(open(2, 'wb', closefd=False), line_buffering=True)
    sys.argv = [script, *args]
    multiprocessing.set_start_method(None, force=True)  # unset, as in a fresh interpreter
    # warnings already shown by the server count as not shown (as in a fresh interpreter)
    warnings.filters[:] = list(warnings.filters)
    warnings._filters_mutated()
    runpy.run_path(script, run_name='__main__')


def run_tool_forked(script: str, *args, env: Optional[dict] = None, cwd: str = REPO,
                    timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a tool as :func:`run_tool` does, in a process forked from a server that imported
    :data:`PRELOAD` once (about 1 s instead of 5-10 s of imports per run).

    The child is a separate process with its own stdout / stderr and exit code: ``sys.exit``
    of ``run_cli`` gives the code; an uncaught exception prints its traceback (code 1). Only
    import-time output of the preloaded modules is not repeated (``test_bad_input`` checks in
    a fresh interpreter that there is none).
    """
    ctx = _fork_context()
    with tempfile.TemporaryDirectory(prefix='mmseg_pm_tool_') as tmp:
        out, err = osp.join(tmp, 'stdout'), osp.join(tmp, 'stderr')
        e = dict(PYTHONUNBUFFERED='1', **(env or {}))
        p = ctx.Process(target=_tool_child, args=(script, [str(a) for a in args], cwd, e, out,
                                                  err))
        p.start()
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            raise AssertionError(f'{script} {args} did not finish within {timeout} s')
        with open(out) as f_out, open(err) as f_err:
            return subprocess.CompletedProcess([script, *args], p.exitcode, f_out.read(),
                                               f_err.read())


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The one-line error contract of the tools: exit code 2, exactly one line on stderr, which
    starts with ``error:`` and contains every needle; no traceback (stdout may hold progress).

    Returns:
        str: the error line.
    """
    assert 'Traceback' not in proc.stderr, proc.stderr[-4000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-4000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-4000:]
    line = lines[0]
    assert line.startswith('error: '), line
    for needle in needles:
        assert str(needle) in line, (needle, line)
    return line


def listing(root) -> List[str]:
    """Every file and folder under ``root`` (relative paths, sorted); [] when it is absent."""
    root = str(root)
    out = []
    for folder, dirs, files in os.walk(root):
        rel = osp.relpath(folder, root)
        out += [osp.normpath(osp.join(rel, n)) for n in dirs + files]
    return sorted(out)


# --------------------------------------------------------------------------------------------
# models and checkpoints
# --------------------------------------------------------------------------------------------
def quiet() -> None:
    """MMEngine's current logger at WARNING (no INFO line per initialised parameter)."""
    from mmengine.logging import MMLogger

    from mmseg_pm.utils.cli import quiet_logging
    if not MMLogger.check_instance_created('mmseg_pm_tools'):
        quiet_logging()
    else:
        MMLogger.get_instance('mmseg_pm_tools')  # the current instance again


def build_model(config, *, init: bool = True, **backbone):
    """The config's segmentor on the CPU (no pretrained weights, random init), eval mode;
    ``backbone`` keys override the backbone config."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    quiet()
    cfg = config if isinstance(config, Config) else Config.fromfile(osp.join(REPO, config))
    cfg.model.pretrained = None
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.backbone.update(backbone)
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    if init:
        model.init_weights()
    return model.eval()


def compress_randomly(model, keep_rate: float = 0.6, prune_rate: float = 0.1, seed: int = 0):
    """Install a uniform structure from random scores (no data needed); returns the model."""
    from mmseg_pm.compression import CompressSettings, random_structures
    random_structures(model, CompressSettings(keep_rate=keep_rate, prune_rate=prune_rate), seed)
    return model


def save_checkpoint(model, path, **meta) -> str:
    """``torch.save`` an MMEngine-style checkpoint (``meta`` with ADE20K's dataset_meta)."""
    import torch
    from mmseg.datasets import ADE20KDataset
    meta = dict(dict(dataset_meta=dict(ADE20KDataset.METAINFO)), **meta)
    torch.save(dict(meta=meta, state_dict=model.state_dict()), str(path))
    return str(path)


def truncated_copy(src, dst) -> str:
    """The first half of ``src`` written to ``dst`` (an interrupted copy)."""
    data = open(src, 'rb').read()
    with open(dst, 'wb') as f:
        f.write(data[:len(data) // 2])
    return str(dst)


def load_state_dict(path) -> dict:
    import torch
    return torch.load(str(path), map_location='cpu', weights_only=False)['state_dict']


#: the tiny models of the analysis-tool tests: 2-layer ViT (C 32, 2 heads), 64 x 64 crop
#: (a 4 x 4 patch grid, N = 16, one CLS token), a linear decode head
TINY_C, TINY_HEADS, TINY_LAYERS, TINY_CROP, NUM_CLASSES = 32, 2, 2, 64, 150


def tiny_cfg(data_root: Optional[str] = None, representation: str = 'sparse',
             token_reduction: Optional[dict] = None, plain: bool = False):
    """The demo config at tiny sizes (:data:`TINY_C` ...), FCN head (``num_convs=0``).

    With ``token_reduction`` the backbone is a ``TokenReductionViT`` with that reducer instead
    of a ``PruneMergeViT``; ``plain``: a ``TokenReductionViT`` without reduction (the
    uncompressed baseline, whose checkpoints hold no ``backbone.pm.*`` tensors)."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, DEMO))
    crop = (TINY_CROP, TINY_CROP)
    cfg.model.pretrained = None
    cfg.model.data_preprocessor.size = crop
    cfg.model.backbone.update(img_size=crop, embed_dims=TINY_C, num_heads=TINY_HEADS,
                              num_layers=TINY_LAYERS)
    cfg.model.backbone.pm_cfg.representation = representation
    if token_reduction is not None or plain:
        cfg.model.type = 'EncoderDecoder'
        cfg.model.pop('distill_cfg', None)
        cfg.model.backbone.type = 'TokenReductionViT'
        cfg.model.backbone.pop('pm_cfg')
        if token_reduction is not None:
            cfg.model.backbone.token_reduction = token_reduction
        cfg.custom_hooks = []
    cfg.model.decode_head = dict(
        type='FCNHead', in_channels=TINY_C, channels=TINY_C, num_convs=0, concat_input=False,
        dropout_ratio=0.0, num_classes=NUM_CLASSES, norm_cfg=dict(type='BN', requires_grad=True),
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
    cfg.model.test_cfg = dict(mode='slide', crop_size=crop, stride=(48, 48))
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(256, 64), keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs')
    ]
    cfg.test_pipeline = pipeline
    cfg.val_dataloader.dataset.pipeline = pipeline
    cfg.test_dataloader.dataset.pipeline = pipeline
    if data_root:
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[key].dataset.data_root = data_root
    return cfg


def timm_vit_tiny(img_size: int = 224, depth: int = 12, seed: int = 0):
    """A randomly initialised timm ViT-Ti/16 (the layout of timm's ImageNet checkpoints:
    ``blocks.*``, ``patch_embed.proj``, ``norm``, ``head``)."""
    import timm
    import torch
    torch.manual_seed(seed)
    return timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=img_size,
                             depth=depth).eval()


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def first_image(data_root: str, split: str = 'validation') -> str:
    folder = osp.join(data_root, 'images', split)
    return osp.join(folder, sorted(os.listdir(folder))[0])


def copy_sample(sample_root: str, dst, num_train: Optional[int] = None) -> List[str]:
    """Copy (not link) the sample's pairs to ``dst``: the first ``num_train`` training pairs
    (sorted; all when None) and the whole validation split.

    Returns:
        list[str]: the stems of the copied training pairs.
    """
    dst = str(dst)
    for kind in ('images', 'annotations'):
        os.makedirs(osp.join(dst, kind, 'training'))
        shutil.copytree(osp.join(sample_root, kind, 'validation'),
                        osp.join(dst, kind, 'validation'))
    names = sorted(os.listdir(osp.join(sample_root, 'images', 'training')))[:num_train]
    for name in names:
        stem = osp.splitext(name)[0]
        shutil.copy(osp.join(sample_root, 'images', 'training', name),
                    osp.join(dst, 'images', 'training', name))
        shutil.copy(osp.join(sample_root, 'annotations', 'training', stem + '.png'),
                    osp.join(dst, 'annotations', 'training', stem + '.png'))
    return [osp.splitext(n)[0] for n in names]


def edit_annotation(root, stem: str, fn, split: str = 'training') -> str:
    """Rewrite ``annotations/<split>/<stem>.png`` under ``root`` with ``fn(label_array)``."""
    import numpy as np
    from PIL import Image
    path = osp.join(str(root), 'annotations', split, stem + '.png')
    ann = np.array(Image.open(path))
    Image.fromarray(fn(ann)).save(path)
    return path


def with_label(value: int):
    """An annotation edit that sets the most frequent labelled class to ``value``."""
    import numpy as np

    def fn(ann):
        labels, counts = np.unique(ann[ann > 0], return_counts=True)
        return np.where(ann == labels[counts.argmax()], value, ann).astype(np.uint8)
    return fn


#: a tiny Segmenter (ViT embed 64, 4 blocks, 2 heads, 128 x 128 crop: 8 x 8 = 64 patches,
#: one-layer mask head) derived from the repository's ViT-T config; slide inference
TINY_VIT_CONFIG = '''_base_ = [{base!r}]
data_root = {data_root!r}
crop_size = (128, 128)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, embed_dims=64, num_layers=4, num_heads=2,
                  drop_path_rate=0.0),
    decode_head=dict(in_channels=64, channels=64, num_heads=2, embed_dims=64, num_layers=1),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(96, 96)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
'''


def write_tiny_vit(folder, data_root, extra='', seed=0):
    """Write ``tiny.py`` (:data:`TINY_VIT_CONFIG` + ``extra`` lines) and ``tiny.pth`` (its
    random initialisation, ``{'state_dict': ...}``) into ``folder``; returns both paths."""
    import torch

    from mmseg_pm.analysis.build import build_segmentor, load_config, segmentor_cfg
    folder = str(folder)
    config = osp.join(folder, 'tiny.py')
    with open(config, 'w') as f:
        f.write(TINY_VIT_CONFIG.format(
            base=osp.join(REPO, 'configs', 'segmenter_vit-t_ade20k.py'),
            data_root=str(data_root)) + extra)
    torch.manual_seed(seed)
    model = build_segmentor(segmentor_cfg(load_config(config)))
    checkpoint = osp.join(folder, 'tiny.pth')
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    return config, checkpoint
