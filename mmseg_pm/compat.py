"""Known fixes for this stack (torch 2.13, mmengine 0.10.7, mmseg 1.2.2), applied on import.

Each fix is small, documented and idempotent:

1. **Local checkpoints load with** ``weights_only=False``. torch >= 2.6 defaults
   ``torch.load(weights_only=True)``, which cannot unpickle MMEngine 0.10 checkpoints
   (``HistoryBuffer``, numpy objects in ``message_hub``): ``--resume``, ``load_from`` and
   ``init_model`` fail with ``UnpicklingError``. We register a local-file loader through
   MMEngine's own ``CheckpointLoader.register_scheme(prefixes='', force=True)``. Only use it
   with files you trust (unpickling runs code).
2. **No downloads at run time.** ``http(s)://`` checkpoints raise ``FileNotFoundError`` naming
   the file to download and where to place it, instead of hanging on a network that is not
   there.
3. **Distributed launch without a GPU.** MMEngine's ``init_dist`` calls
   ``torch.cuda.set_device(local_rank)`` for every launcher (pytorch, slurm, mpi), which raises
   ``RuntimeError: Found no NVIDIA driver`` on a CPU machine before the (gloo) process group is
   created. When no GPU is visible, the launcher helpers run with ``set_device`` as a no-op;
   with a GPU nothing changes. The backend itself and DDP's ``device_ids`` are set per run by
   :func:`prepare_cfg`.
4. **Unreadable checkpoints** (truncated, not a torch file) raise
   :class:`CheckpointReadError` naming the file instead of a deep ``torch.load`` traceback.
5. **No warnings that mmseg's own code and configs trigger in every run.** mmseg 1.2.2's
   decode heads call its deprecated ``build_loss`` and build ``CrossEntropyLoss`` with the
   default ``avg_non_ignore=False``; its ADE20K pipelines set ``reduce_zero_label`` in
   ``LoadAnnotations`` (deprecated there); its default runtime builds the visualization hook
   with ``draw=False``; its Segmenter configs give ``model.pretrained``, which
   ``EncoderDecoder`` hands to the ViT as the deprecated ``pretrained`` argument. Each warns
   at every model build, data load or run: multi-line warnings on stderr that the
   user cannot act on (a refused run would print them before its one ``error:`` line).
   Exactly these five messages from ``mmseg`` are ignored.
"""
import functools
import os.path as osp
import pickle
import warnings
import zipfile

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from .errors import CheckpointReadError


def load_local_checkpoint(filename: str, map_location=None):
    """Load a trusted local checkpoint with ``torch.load(weights_only=False)``.

    Raises:
        FileNotFoundError: the file does not exist (message names the absolute path).
        CheckpointReadError: ``torch.load`` cannot read it (truncated or not a checkpoint).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {osp.abspath(filename)}')
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        # (torch 2.13 raises OSError 'Invalid argument' for some truncated zip archives)
        raise CheckpointReadError(_unreadable(filename, e)) from e


def _unreadable(filename: str, e: BaseException) -> str:
    text = str(e).strip()
    reason = text.splitlines()[0].split('. ')[0].rstrip('.')[:200] if text else ''
    size = osp.getsize(filename)
    return (f'cannot read checkpoint {osp.abspath(filename)} ({size} bytes): '
            f'{type(e).__name__}: {reason} (a truncated or corrupt file, e.g. an '
            f'interrupted copy or save, or not a PyTorch checkpoint): copy it again or use '
            f'another checkpoint')


def _cpu_safe_launcher(init_fn):
    """Wrap an MMEngine launcher helper so it skips ``torch.cuda.set_device`` without a GPU."""
    if getattr(init_fn, '_mmseg_pm_cpu_safe', False):
        return init_fn

    @functools.wraps(init_fn)
    def wrapper(*args, **kwargs):
        if torch.cuda.is_available():
            return init_fn(*args, **kwargs)
        set_device = torch.cuda.set_device
        torch.cuda.set_device = lambda device: None
        try:
            return init_fn(*args, **kwargs)
        finally:
            torch.cuda.set_device = set_device

    wrapper._mmseg_pm_cpu_safe = True
    return wrapper


def refuse_download(filename: str, map_location=None, **kwargs):
    """Raise instead of downloading: this project runs offline.

    Raises:
        FileNotFoundError: always, saying which file to place where.
    """
    name = osp.basename(filename.split('?')[0])
    raise FileNotFoundError(
        f'mmseg_pm does not download weights at run time. Download {filename} on a machine '
        f'with internet access, place it at checkpoints/{name} and point the config at that '
        f'local path (e.g. --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/{name}'
        f'), or run without it: --cfg-options model.pretrained=None')


#: (message regex, module regex) of the UserWarnings mmseg 1.2.2 emits in every run
MMSEG_NOISE_WARNINGS = (
    (r'``build_loss`` would be deprecated soon', r'mmseg\.models\.builder'),
    (r'Default ``avg_non_ignore`` is False', r'mmseg\.models\.losses\.cross_entropy_loss'),
    (r'`reduce_zero_label` will be deprecated', r'mmseg\.datasets\.transforms\.loading'),
    (r'The draw is False, it means that the hook for visualization will not take effect',
     r'mmseg\.engine\.hooks\.visualization_hook'),
    (r'DeprecationWarning: pretrained is deprecated', r'mmseg\.models\.backbones\.vit'),
)


def apply() -> None:
    """Apply the fixes (idempotent)."""
    for message, module in MMSEG_NOISE_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=UserWarning, module=module)
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=refuse_download,
                                     force=True)
    from mmengine.dist import utils as dist_utils
    for name in ('_init_dist_pytorch', '_init_dist_slurm', '_init_dist_mpi'):
        setattr(dist_utils, name, _cpu_safe_launcher(getattr(dist_utils, name)))


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
