"""Known fixes for this stack (torch 2.13, mmengine 0.10.7, mmseg 1.2.2), applied on import.

See ``../shared/docs/environment.md``. Each fix is small, documented and idempotent:

1. **Local checkpoints load with** ``weights_only=False``. torch >= 2.6 defaults
   ``torch.load(weights_only=True)``, which cannot unpickle MMEngine 0.10 checkpoints
   (``HistoryBuffer``, numpy objects in ``message_hub``): ``--resume``, ``load_from`` and
   ``init_model`` fail with ``UnpicklingError``. We register a local-file loader through
   MMEngine's own ``CheckpointLoader.register_scheme(prefixes='', force=True)``. Only use it
   with files you trust (unpickling runs code).
2. **No downloads at run time.** ``http(s)://`` checkpoints raise ``FileNotFoundError`` naming
   the file to download and where to place it, instead of hanging on a network that is not
   there.
"""
import os
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def load_local_checkpoint(filename: str, map_location=None):
    """Load a trusted local checkpoint with ``torch.load(weights_only=False)``.

    Raises:
        FileNotFoundError: the file does not exist (message names the absolute path).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {osp.abspath(filename)}')
    return torch.load(filename, map_location=map_location, weights_only=False)


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


def apply() -> None:
    """Apply the fixes (idempotent)."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=refuse_download,
                                     force=True)
