"""The settings of the Prune-and-Merge compression step, validated once."""
from dataclasses import asdict, dataclass, fields
from typing import Optional

from ..errors import ConfigError

ALLOCATIONS = ('global', 'uniform')
SCORE_MODES = ('train', 'eval')


@dataclass(frozen=True)
class CompressSettings:
    """Scoring and structure-search settings (Mao et al., IEEE TMM 2025, arXiv 2503.23455).

    Attributes:
        keep_rate (float): mean K / N over the units, in (0, 1]. Default: 0.6.
        prune_rate (float): pruned fraction of N per unit, in [0, 1);
            ``keep_rate + prune_rate <= 1``. Default: 0.0.
        allocation (str): ``'global'`` (one ranking over all units: the paper's cross-layer
            search, official ``tm_prune_merge_to_center.tm_prune``) or ``'uniform'`` (the same
            K in every unit, PM-Segmenter's ``tm_prune``). Default: ``'global'``.
        depth_discount (float): per-block factor ``1 - depth_discount * l`` on the normalised
            scores (official classification 0.025, segmentation 0). Default: 0.025.
        official_row_clip (bool): replicate the official ``(c + 1) // W`` row clip of the
            merge-to-center groups. Default: True.
        score_iters (int): scoring batches, >= 1 (the official segmentation ``--iter-num 100``
            runs 102). Default: 102.
        score_mode (str): ``'train'`` (dropout / drop-path on, as the official code) or
            ``'eval'``. Default: ``'train'``.

    Raises:
        ConfigError: a value out of range (one line naming it).
    """
    keep_rate: float = 0.6
    prune_rate: float = 0.0
    allocation: str = 'global'
    depth_discount: float = 0.025
    official_row_clip: bool = True
    score_iters: int = 102
    score_mode: str = 'train'

    def __post_init__(self):
        k, p = self.keep_rate, self.prune_rate
        if not (isinstance(k, (int, float)) and not isinstance(k, bool) and 0 < k <= 1):
            raise ConfigError(f'keep_rate must be in (0, 1], got {k!r}')
        if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1):
            raise ConfigError(f'prune_rate must be in [0, 1), got {p!r}')
        if k + p > 1 + 1e-9:
            raise ConfigError(f'keep_rate + prune_rate must be <= 1, got {k} + {p}')
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f'allocation must be one of {ALLOCATIONS}, got '
                              f'{self.allocation!r}')
        if not (isinstance(self.depth_discount, (int, float)) and self.depth_discount >= 0):
            raise ConfigError(f'depth_discount must be >= 0, got {self.depth_discount!r}')
        if not isinstance(self.score_iters, int) or isinstance(self.score_iters, bool) \
                or self.score_iters < 1:
            raise ConfigError(f'score_iters must be an integer >= 1, got {self.score_iters!r}')
        if self.score_mode not in SCORE_MODES:
            raise ConfigError(f'score_mode must be one of {SCORE_MODES}, got '
                              f'{self.score_mode!r}')

    @classmethod
    def keys(cls):
        return tuple(f.name for f in fields(cls))

    @classmethod
    def resolve(cls, explicit: Optional[dict] = None, legacy: Optional[dict] = None,
                overrides: Optional[dict] = None) -> 'CompressSettings':
        """Settings from the hook's arguments (``explicit``), the deprecated ``pm_cfg`` keys of
        the backbone (``legacy``) and command-line ``overrides`` (highest priority); None
        values count as not given.

        Raises:
            ConfigError: an unknown key, a key set differently in the hook and in ``pm_cfg``,
                or an invalid value.
        """
        def given(d):
            return {k: v for k, v in (d or {}).items() if v is not None}
        explicit, legacy, overrides = given(explicit), given(legacy), given(overrides)
        for source in (explicit, legacy, overrides):
            unknown = set(source) - set(cls.keys())
            if unknown:
                raise ConfigError(f'unknown compression settings {sorted(unknown)}; known: '
                                  f'{list(cls.keys())}')
        clash = [k for k in set(explicit) & set(legacy) if explicit[k] != legacy[k]]
        if clash:
            k = sorted(clash)[0]
            raise ConfigError(f'{k} is set both on PMCompressHook ({explicit[k]!r}) and in '
                              f'model.backbone.pm_cfg ({legacy[k]!r}, deprecated): set it on '
                              f'the hook only')
        return cls(**{**legacy, **explicit, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ['CompressSettings', 'ALLOCATIONS', 'SCORE_MODES']
