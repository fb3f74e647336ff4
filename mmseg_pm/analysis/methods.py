"""A segmentor of one token-reduction method whose knob (:mod:`.knobs`) can be set on the same
weights: a parameter-free reducer (ToMe, EViT, ALGM, MSTM without fusion) is swapped in
(``TokenReductionViT.replace_reducer``); Prune-and-Merge installs the structure the global
search (Mao et al., IEEE TMM 2025, arXiv 2503.23455) gives for a keep rate from one scoring pass
on the training split."""
import copy
from typing import Optional

from torch import Tensor

from ..models.backbones import reduction_backbone
from .build import build_segmentor, variant_cfg
from .flops import count_flops, count_flops_over_images, gflops
from .knobs import PM_PRUNE_RATE, Knob

#: the Prune-and-Merge reducer of a training-free comparison: one unit per block, sparse M/R
PM_REDUCER = dict(type='PruneMerge', mode='layer', layers=None, representation='sparse',
                  trainable=False)


class MethodModel:
    """A segmentor of one method whose knob can be set on the same weights: a parameter-free
    reducer is swapped in (``TokenReductionViT.replace_reducer``); Prune-and-Merge installs the
    structure the global search gives for a keep rate from one set of scores.

    Args:
        knob (Knob): the method's knob.
        model (nn.Module): the segmentor (eval mode).
        images (Tensor): ``(M, 3, H, W)`` pre-processed validation images at the crop, for the
            GFLOPs (the first one for static methods, all for per-image ones).
        pm (dict, optional): ``scores``, ``prune_rate``, ``score_iters`` for Prune-and-Merge.
    """

    def __init__(self, knob, model, images, pm: Optional[dict] = None):
        self.knob, self.model, self.images, self.pm = knob, model, images, pm
        self.backbone = reduction_backbone(model)
        self.counts = {}

    def configure(self, value) -> dict:
        """Set the knob to ``value`` (a float, or an int for ToMe's ``r``).

        Returns:
            dict: what the row records: ``token_reduction`` (the reducer config), or ``pm``
            (the compression settings and per-unit ``K`` / merged / pruned counts).

        Raises:
            ConfigError: a value the method refuses (out of range).
        """
        if self.pm is None:
            cfg = self.knob.make(value)
            self.backbone.replace_reducer(cfg)
            return dict(token_reduction=cfg)
        from ..compression import CompressSettings, search_structures
        s = CompressSettings(keep_rate=value, prune_rate=self.pm['prune_rate'],
                             score_iters=self.pm['score_iters'])
        reducer = self.backbone.reducer
        structures, rows = search_structures(
            self.pm['scores'], reducer.spans, self.backbone.grid_size, keep_rate=s.keep_rate,
            prune_rate=s.prune_rate, allocation=s.allocation, depth_discount=s.depth_discount,
            official_row_clip=s.official_row_clip)
        reducer.install(structures)
        return dict(pm=dict(s.to_dict(), score_split='train', units=[
            dict(span=r['span'], K=r['K'], merged=r['merged'], pruned=r['pruned'])
            for r in rows]))

    def gflops(self, value) -> float:
        """GFLOPs per image at knob ``value`` (1 multiply-add = 1 FLOP, reduction ops counted,
        :func:`~mmseg_pm.analysis.flops.count_flops` at the images' size); per-image methods
        (ALGM): the mean over the images. Cached per value; :attr:`counts` keeps ``gflops``,
        ``per_image`` (mean / min / max / n, per-image methods) and ``tokens`` (per block,
        static methods). Leaves the model set to ``value``."""
        if value not in self.counts:
            self.configure(value)
            if self.backbone.reducer.static:
                f = count_flops(self.model, inputs=self.images[:1])
                g, per_image, tokens = gflops(f['flops_mr_counted']['total']), None, f['tokens']
            else:  # token counts differ per image: no one token list
                f = count_flops_over_images(self.model, self.images)
                per_image = {k: f['per_image'][k] for k in ('mean', 'min', 'max', 'n')}
                g, tokens = per_image['mean'], None
            self.counts[value] = dict(gflops=g, per_image=per_image, tokens=tokens)
        return self.counts[value]['gflops']


def build_method_model(knob: Knob, model_cfg: dict, checkpoint: Optional[str], cfg,
                       images: Tensor, *, device: str = 'cpu', scope: str = 'mmseg',
                       score_iters: int = 102, prune_rate: float = PM_PRUNE_RATE,
                       seed: int = 0, progress: bool = True) -> MethodModel:
    """Build the model of ``knob.method`` from the uncompressed ``model_cfg``
    (``variant_cfg(model_cfg, 'reduced', ...)``) and ``checkpoint`` (strict), at the weakest
    setting of its knob.

    Prune-and-Merge: ``score_iters`` batches of ``cfg.train_dataloader`` (no workers; seeded
    with ``seed``, so the scores, and every structure searched from them, are reproducible) go
    through the gradient-weighted scoring pass (``score_mode='train'``, as the official code).

    Args:
        knob (Knob): the method's knob (:func:`~mmseg_pm.analysis.knobs.method_knob`).
        model_cfg (dict): the uncompressed segmentor config (plain ViT backbone).
        checkpoint (str | None): its weights.
        cfg (Config): the full config (training data for the scoring pass).
        images (Tensor): ``(M, 3, H, W)`` pre-processed images at the crop, for the GFLOPs.
        device, scope (str): where to build, mmengine default scope.
        score_iters (int), prune_rate (float), seed (int), progress (bool): Prune-and-Merge.

    Returns:
        MethodModel: in eval mode.

    Raises:
        ConfigError: the method does not fit the backbone (e.g. EViT without a CLS token).
        CheckpointMismatchError: the checkpoint does not fit.
        UserError: missing or empty training data (Prune-and-Merge).
    """
    if knob.method != 'pm':
        weakest = knob.hi if knob.increasing else knob.lo
        model = build_segmentor(variant_cfg(model_cfg, 'reduced', knob.make(weakest)),
                                checkpoint, device, scope)
        return MethodModel(knob, model, images)
    from mmengine.runner import Runner
    from mmengine.runner.utils import set_random_seed

    from ..compression import score_segmentor
    model = build_segmentor(variant_cfg(model_cfg, 'reduced', PM_REDUCER), checkpoint, device,
                            scope)
    set_random_seed(seed)
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    scores = score_segmentor(model, loader, score_iters, None, 'train', progress=progress)
    model.eval()
    model.zero_grad(set_to_none=True)
    return MethodModel(knob, model, images, pm=dict(scores=scores, prune_rate=prune_rate,
                                                    score_iters=score_iters))


__all__ = ['PM_REDUCER', 'MethodModel', 'build_method_model']
