"""``PruneMergeViT``: the Prune-and-Merge preset of :class:`TokenReductionViT` (``pm_cfg``)."""
from typing import Dict, List, Optional, Tuple

from mmengine.logging import print_log
from mmseg.registry import MODELS

from ...errors import ConfigError
from ...functional.prune_merge import PMStructure
from ..reducers.prune_merge import PruneMergeUnit
from .token_reduction_vit import TokenReductionViT

#: pm_cfg keys that build the units
STRUCTURE_KEYS = ('mode', 'layers', 'spans', 'representation', 'trainable', 'restore_outputs')
#: compression-step settings earlier releases read from pm_cfg; they belong to
#: ``PMCompressHook`` / ``tools/pm_compress.py`` now (``mmseg_pm.compression.CompressSettings``)
DEPRECATED_KEYS = ('keep_rate', 'prune_rate', 'allocation', 'depth_discount',
                   'official_row_clip', 'score_iters', 'score_mode')
DEFAULT_PM_CFG = dict(mode='layer', layers=None, spans=None, representation='sparse',
                      trainable=True, restore_outputs=True)


@MODELS.register_module()
class PruneMergeViT(TokenReductionViT):
    """Vision Transformer with Prune-and-Merge token compression.

    Mao et al., "Prune and Merge: Efficient Token Compression for Vision Transformer with Spatial
    Information Preserved", IEEE TMM 2025 (arXiv 2503.23455).

    :class:`TokenReductionViT` with ``token_reduction=dict(type='PruneMerge', ...)`` built from
    ``pm_cfg`` and kept under ``pm`` (state-dict keys ``backbone.pm.<a>.*``, as every earlier
    release wrote them). Units start as the identity and are skipped, so the backbone
    reproduces mmseg's ViT until a structure is installed (:meth:`install_structures`,
    ``PMCompressHook``, or loading a compressed checkpoint).

    Args:
        pm_cfg (dict, optional): None means no units (plain ViT). Keys (defaults in
            ``DEFAULT_PM_CFG``): ``mode`` ('layer' | 'span'), ``layers`` (list[int] | None =
            all), ``spans`` (list of inclusive ``(a, b)``; negative indices count from the
            end), ``representation`` ('sparse' | 'dense'), ``trainable`` (bool),
            ``restore_outputs`` (bool). The compression-step keys of earlier releases
            (``keep_rate``, ``prune_rate``, ``allocation``, ``depth_discount``,
            ``official_row_clip``, ``score_iters``, ``score_mode``) are still read, with a
            one-line deprecation notice, and handed to ``PMCompressHook``
            (:attr:`compress_cfg`).
        **kwargs: every argument of mmseg's ``VisionTransformer``.

    Raises:
        ConfigError: unknown ``pm_cfg`` keys, bad mode, representation, layers or spans.
    """
    reducer_attr = 'pm'

    def __init__(self, pm_cfg: Optional[dict] = None, **kwargs):
        if 'token_reduction' in kwargs:
            raise ConfigError('PruneMergeViT takes pm_cfg; for another method use '
                              'type=\'TokenReductionViT\' with token_reduction=dict(type=...)')
        cfg, legacy = _split_pm_cfg(pm_cfg)
        reduction = None if cfg is None else dict(
            type='PruneMerge', mode=cfg['mode'], layers=cfg['layers'], spans=cfg['spans'],
            representation=cfg['representation'], trainable=cfg['trainable'])
        super().__init__(token_reduction=reduction,
                         restore_outputs=True if cfg is None else cfg['restore_outputs'],
                         **kwargs)
        if cfg is not None:
            spans = self.pm.spans
            cfg.update(spans=spans, layers=[a for a, _ in spans] if cfg['mode'] == 'layer'
                       else cfg['layers'])
        self.pm_cfg = cfg
        self.compress_cfg = legacy

    @property
    def pm_units(self) -> List[PruneMergeUnit]:
        """The Prune-and-Merge units in block order ([] without ``pm_cfg``)."""
        return self.pm.units if self.pm is not None else []

    @property
    def is_compressed(self) -> bool:
        """True when at least one unit holds a non-identity structure."""
        return self.pm is not None and not self.pm.is_identity

    @property
    def structure_grid(self) -> Optional[Tuple[int, int]]:
        """Patch grid ``(H_g, W_g)`` the units are built for (from ``img_size``), or None."""
        return self.grid_size if self.pm is not None else None

    def install_structures(self, structures: Dict[int, PMStructure]) -> None:
        """Install one structure per unit, keyed by the unit's first block.

        Raises:
            KeyError: a key without a unit.
            StructureError: a structure for another grid, or inconsistent.
        """
        self.pm.install(structures)

    def structure_summary(self) -> dict:
        """JSON-serialisable structure of every unit (span, grid, N, K, merged, pruned, groups),
        plus the config keys that rebuild the units."""
        return dict(pm_cfg=self.pm_cfg, with_cls_token=self.with_cls_token,
                    units=[u.summary() for u in self.pm_units])


def _split_pm_cfg(pm_cfg: Optional[dict]) -> Tuple[Optional[dict], dict]:
    """(structure keys with defaults, deprecated compression keys) of ``pm_cfg``.

    Raises:
        ConfigError: unknown keys.
    """
    if pm_cfg is None:
        return None, {}
    unknown = set(pm_cfg) - set(STRUCTURE_KEYS) - set(DEPRECATED_KEYS)
    if unknown:
        raise ConfigError(f'unknown pm_cfg keys {sorted(unknown)}; known: '
                          f'{sorted(STRUCTURE_KEYS)} (compression settings such as keep_rate '
                          f'go to PMCompressHook)')
    legacy = {k: pm_cfg[k] for k in DEPRECATED_KEYS if k in pm_cfg}
    if legacy:
        print_log(f'pm_cfg.{"/".join(legacy)} are compression settings: set them on the hook '
                  f'(custom_hooks=[dict(type=\'PMCompressHook\', {", ".join(legacy)}=...)]); '
                  f'read from pm_cfg for now (deprecated)', logger='current', level=30)
    cfg = dict(DEFAULT_PM_CFG)
    cfg.update({k: v for k, v in pm_cfg.items() if k in STRUCTURE_KEYS})
    return cfg, legacy


__all__ = ['PruneMergeViT', 'DEFAULT_PM_CFG', 'STRUCTURE_KEYS', 'DEPRECATED_KEYS']
