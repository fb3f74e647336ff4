"""Atomic file writes for the files mmseg_pm writes itself (structure JSON, checkpoints)."""
import json
import os
import os.path as osp
import tempfile
from typing import Any, Callable

import torch


def atomic_write(path: str, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves a partial file.

    Returns:
        str: ``path``.
    """
    path = osp.abspath(path)
    os.makedirs(osp.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', dir=osp.dirname(path))
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_json(obj: Any, path: str) -> str:
    """Write ``obj`` as indented JSON, atomically."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1)
            f.write('\n')
    return atomic_write(path, write)


def save_text(text: str, path: str) -> str:
    """Write ``text`` to ``path``, atomically."""
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    return atomic_write(path, write)


def save_checkpoint(checkpoint: dict, path: str) -> str:
    """``torch.save`` a checkpoint dict atomically."""
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
