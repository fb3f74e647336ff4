"""``PMCompressHook``: compress at the start of training, keep the teacher across resumes."""
import copy
import gc
import os.path as osp

import torch
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from ...compression import CompressSettings, compress_segmentor, pm_backbone
from ...utils.io import save_json
from ..preflight import check_val_fits_structure
from .distill_hook import SelfDistillationHook, unwrap
from .rng_state_hook import preserved_rng_state


@HOOKS.register_module()
class PMCompressHook(SelfDistillationHook):
    """Run the Prune-and-Merge compression step before the first training iteration.

    Mao et al., "Prune and Merge", IEEE TMM 2025 (arXiv 2503.23455): gradient-weighted scoring,
    global structure search, then self-distillation finetuning.

    * ``before_train``: if the loaded weights carry no structure (``load_from`` = an
      uncompressed Segmenter), freeze the teacher, score ``score_iters`` training batches,
      search and install the structure (:func:`mmseg_pm.compression.compress_segmentor`), log
      the table and write ``<work_dir>/pm_structure.json``. If the model already holds a
      structure (``--resume``, or ``load_from`` a compressed checkpoint) nothing is scored
      again. Before that, the validation settings are checked against the fixed crop
      (``tools/test.py`` checks the test settings before it starts).
    * checkpoints carry the teacher and torch's RNG state (:class:`SelfDistillationHook`).
    * With ``representation='dense'`` under DDP, the model is re-wrapped after M / R changed
      shape (DDP keeps the parameter shapes it was built with).

    Args:
        keep_rate, prune_rate, allocation, depth_discount, official_row_clip, score_iters,
            score_mode: :class:`~mmseg_pm.compression.CompressSettings` (None: its default,
            or the deprecated value in the backbone's ``pm_cfg``).
        structure_file (str): file name of the JSON record in ``work_dir``.
        overrides (dict, optional): deprecated spelling of the settings above.

    Raises:
        ConfigError: bad settings (when the hook is built), or a setting given both here and
            in ``pm_cfg`` with different values (at ``before_train``).
    """
    priority = 'VERY_HIGH'

    def __init__(self, keep_rate=None, prune_rate=None, allocation=None, depth_discount=None,
                 official_row_clip=None, score_iters=None, score_mode=None,
                 structure_file: str = 'pm_structure.json', overrides=None):
        super().__init__()
        self.settings = dict(keep_rate=keep_rate, prune_rate=prune_rate, allocation=allocation,
                             depth_discount=depth_discount, official_row_clip=official_row_clip,
                             score_iters=score_iters, score_mode=score_mode)
        self.settings.update({k: v for k, v in (overrides or {}).items()})
        CompressSettings.resolve(self.settings)  # validate now
        self.structure_file = structure_file

    def resolve_settings(self, backbone) -> CompressSettings:
        """The hook's settings merged with the backbone's deprecated ``pm_cfg`` keys."""
        return CompressSettings.resolve(self.settings, getattr(backbone, 'compress_cfg', None))

    def before_train(self, runner) -> None:
        model = unwrap(runner.model)
        backbone = pm_backbone(model)
        check_val_fits_structure(runner.cfg, backbone)
        if backbone.is_compressed:
            print_log('Prune-and-Merge: the loaded checkpoint carries its structure; not '
                      'scoring again', logger='current')
            super().before_train(runner)
        else:
            self._compress(runner, model, self.resolve_settings(backbone))
        _rewrap_ddp_if_dense(runner, backbone)

    def _compress(self, runner, model, settings: CompressSettings) -> None:
        # a loader of its own: iterating runner.train_dataloader a second time would close the
        # InfiniteSampler's shared index generator under the training loop
        data = runner.build_dataloader(copy.deepcopy(runner.cfg.train_dataloader),
                                       seed=runner.seed)
        with preserved_rng_state():  # training sees the same random streams as without scoring
            report = compress_segmentor(model, data, settings, progress=is_main_process())
        del data
        if is_main_process():
            path = save_json(report, osp.join(runner.work_dir, self.structure_file))
            print_log(f'Prune-and-Merge structure saved to {path}', logger='current')


def _rewrap_ddp_if_dense(runner, backbone) -> None:
    """Re-wrap a DDP model after dense M / R changed shape (DDP keeps the shapes it saw)."""
    if backbone.pm_cfg['representation'] != 'dense' or not isinstance(
            runner.model, torch.nn.parallel.DistributedDataParallel):
        return
    module = runner.model.module
    runner.model = None
    gc.collect()  # the old reducer must be gone before a new one is built
    runner.model = runner.wrap_model(runner.cfg.get('model_wrapper_cfg'), module)
