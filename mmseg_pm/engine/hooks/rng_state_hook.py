"""``RNGStateHook``: torch's random state carried across ``--resume``."""
import contextlib
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save torch's CPU and CUDA random states in every checkpoint (``checkpoint['pm_torch_rng']``)
    and restore them before the first resumed iteration.

    MMEngine replays the data streams of a resumed run itself but does not save torch's RNG, so
    drop-path and dropout masks would differ from an uninterrupted run; with this hook a
    resumed CPU run gives the same weights as an uninterrupted one.
    """
    priority = 'VERY_HIGH'

    def __init__(self):
        self._pending = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['pm_torch_rng'] = dict(
            cpu=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # a resumed run (``--resume``), not a ``load_from`` initialisation
        if 'pm_torch_rng' in checkpoint and runner.cfg.get('resume', False):
            self._pending = checkpoint['pm_torch_rng']

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is not None:
            torch.set_rng_state(self._pending['cpu'])
            if torch.cuda.is_available() and self._pending.get('cuda'):
                torch.cuda.set_rng_state_all(self._pending['cuda'])
            self._pending = None


@contextlib.contextmanager
def preserved_rng_state():
    """Restore Python's, NumPy's and torch's (CPU and CUDA) random states on exit, so a pass
    that draws random numbers (the scoring pass: data augmentation, drop-path) does not shift
    the training run's streams, and a resumed run (which does not score) replays the same data
    as an uninterrupted one."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)
