"""``PMCompressHook``: compress at the start of training, keep the teacher across resumes."""
import contextlib
import copy
import gc
import os.path as osp
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ...compression import compress_segmentor, get_pm_backbone
from ...utils.io import save_json
from ...utils.preflight import UserError


@HOOKS.register_module()
class PMCompressHook(Hook):
    """Run the Prune-and-Merge compression step before the first training iteration.

    * ``before_train``: if the loaded weights carry no structure (``load_from`` = an
      uncompressed Segmenter), freeze the teacher, score ``score_iters`` training batches,
      search and install the structure (:func:`mmseg_pm.compression.compress_segmentor`), log
      the table and write ``<work_dir>/pm_structure.json``. If the model already holds a
      structure (``--resume``, or ``load_from`` a compressed checkpoint) nothing is scored again.
    * ``before_save_checkpoint`` / ``after_load_checkpoint``: carry the teacher's weights as
      ``checkpoint['pm_teacher']`` so that ``--resume`` continues the same distillation, and
      torch's RNG state as ``checkpoint['pm_torch_rng']``, restored before the first resumed
      iteration (drop-path masks then match an uninterrupted run; MMEngine does not save it).
    * With ``representation='dense'`` under DDP, the model is re-wrapped after M / R changed
      shape (DDP keeps the parameter shapes it was built with).

    Args:
        overrides (dict, optional): compression settings replacing the backbone's ``pm_cfg``
            (``keep_rate``, ``prune_rate``, ``score_iters``, ...).
        structure_file (str): file name of the JSON record in ``work_dir``.
    """
    priority = 'VERY_HIGH'

    def __init__(self, overrides: Optional[dict] = None,
                 structure_file: str = 'pm_structure.json'):
        self.overrides = overrides or {}
        self.structure_file = structure_file
        self._pending_rng = None

    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_train(self, runner) -> None:
        model = self._model(runner)
        backbone = get_pm_backbone(model)
        if backbone.is_compressed:
            print_log('Prune-and-Merge: the loaded checkpoint carries its structure; not '
                      'scoring again', logger='current')
            if hasattr(model, 'init_teacher') and model.teacher is None:
                print_log('Prune-and-Merge: no teacher weights in the checkpoint: distillation '
                          'is off for this run', logger='current', level=30)
        else:
            self._compress(runner, model)
        _rewrap_ddp_if_dense(runner, backbone)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # torch's RNG (drop-path, dropout) as it was when the resumed checkpoint was saved;
        # MMEngine replays the data streams itself but does not save this state
        if self._pending_rng is not None:
            torch.set_rng_state(self._pending_rng['cpu'])
            if torch.cuda.is_available() and self._pending_rng.get('cuda'):
                torch.cuda.set_rng_state_all(self._pending_rng['cuda'])
            self._pending_rng = None

    def _compress(self, runner, model) -> None:
        # a loader of its own: iterating runner.train_dataloader a second time would close the
        # InfiniteSampler's shared index generator under the training loop
        data = runner.build_dataloader(copy.deepcopy(runner.cfg.train_dataloader),
                                       seed=runner.seed)
        with preserved_rng_state():  # training sees the same random streams as without scoring
            report = compress_segmentor(model, data, self.overrides,
                                        progress=is_main_process())
        if is_main_process():
            path = save_json(report, osp.join(runner.work_dir, self.structure_file))
            print_log(f'Prune-and-Merge structure saved to {path}', logger='current')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        teacher = getattr(self._model(runner), 'teacher', None)
        if teacher is not None:
            checkpoint['pm_teacher'] = {k: v.cpu() for k, v in teacher.state_dict().items()}
        checkpoint['pm_torch_rng'] = dict(
            cpu=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = self._model(runner)
        check_checkpoint_matches(model, checkpoint)
        if runner._resume and 'pm_torch_rng' in checkpoint:
            self._pending_rng = checkpoint['pm_torch_rng']
        if 'pm_teacher' in checkpoint and hasattr(model, 'init_teacher'):
            model.init_teacher(checkpoint['pm_teacher'])


def _rewrap_ddp_if_dense(runner, backbone) -> None:
    """Re-wrap a DDP model after dense M / R changed shape (DDP keeps the shapes it saw)."""
    if backbone.pm_cfg['representation'] != 'dense' or not isinstance(
            runner.model, torch.nn.parallel.DistributedDataParallel):
        return
    module = runner.model.module
    runner.model = None
    gc.collect()  # the old reducer must be gone before a new one is built
    runner.model = runner.wrap_model(runner.cfg.get('model_wrapper_cfg'), module)


@contextlib.contextmanager
def preserved_rng_state():
    """Restore Python's, NumPy's and torch's (CPU and CUDA) random states on exit, so the
    scoring pass (data augmentation, drop-path) does not shift the training run's streams and
    a resumed run (which does not score) replays the same data as an uninterrupted one."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


def check_checkpoint_matches(model, checkpoint: dict) -> None:
    """Refuse a checkpoint whose weights do not fit the model (MMEngine loads ``load_from``
    with ``strict=False``, which would only warn and train from random weights).

    Prune-and-Merge tensors (``backbone.pm.*``) may be absent (an uncompressed checkpoint) and
    may differ in shape (they are re-shaped to the checkpoint's structure).

    Raises:
        UserError: names the first missing or mismatched tensors and both shapes.
    """
    state = checkpoint.get('state_dict', checkpoint)
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    own = model.state_dict()
    is_pm = lambda k: k.startswith('backbone.pm.')  # noqa: E731
    missing = [k for k in own if k not in state and not is_pm(k)]
    mismatched = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}'
                  for k, v in own.items()
                  if k in state and not is_pm(k) and hasattr(state[k], 'shape')
                  and tuple(state[k].shape) != tuple(v.shape)]
    if missing or mismatched:
        raise UserError(
            'the checkpoint does not match the config: '
            + (f'{len(mismatched)} shape mismatches, e.g. {"; ".join(mismatched[:3])}. '
               if mismatched else '')
            + (f'{len(missing)} missing tensors, e.g. {", ".join(missing[:3])}. '
               if missing else '')
            + 'Use the uncompressed checkpoint of the same architecture as this config.')
