"""Compression settings: validated once, resolved from the hook, the deprecated pm_cfg keys and
command-line overrides."""
import pytest

from mmseg_pm.compression import CompressSettings
from mmseg_pm.errors import ConfigError
from mmseg_pm.models.backbones.prune_merge_vit import DEPRECATED_KEYS


@pytest.mark.parametrize('keep,prune', [(0.0, 0.0), (1.1, 0.0), (0.5, 1.0), (0.7, 0.4),
                                        (-0.1, 0.0), (0.5, -0.1)])
def test_rates_rejected(keep, prune):
    with pytest.raises(ConfigError):
        CompressSettings(keep_rate=keep, prune_rate=prune)


@pytest.mark.parametrize('bad', [dict(allocation='local'), dict(score_iters=0),
                                 dict(score_iters=2.5), dict(score_mode='test'),
                                 dict(depth_discount=-1)])
def test_other_settings_rejected(bad):
    with pytest.raises(ConfigError):
        CompressSettings(**bad)


def test_resolve_priorities_and_conflicts():
    s = CompressSettings.resolve(dict(keep_rate=0.5, score_iters=None), dict(prune_rate=0.2),
                                 dict(score_iters=7))
    assert (s.keep_rate, s.prune_rate, s.score_iters) == (0.5, 0.2, 7)
    # the same value in the hook and (deprecated) pm_cfg is fine, different values are not
    assert CompressSettings.resolve(dict(keep_rate=0.5), dict(keep_rate=0.5)).keep_rate == 0.5
    with pytest.raises(ConfigError, match='both on PMCompressHook'):
        CompressSettings.resolve(dict(keep_rate=0.5), dict(keep_rate=0.6))
    with pytest.raises(ConfigError, match='unknown compression settings'):
        CompressSettings.resolve(dict(keep=0.5))


def test_deprecated_pm_cfg_keys_are_the_settings():
    assert set(DEPRECATED_KEYS) == set(CompressSettings.keys())
