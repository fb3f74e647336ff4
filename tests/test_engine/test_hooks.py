"""PMCompressHook: settings validated when the hook is built, merged with deprecated pm_cfg."""
import pytest
from mmseg.registry import HOOKS

from mmseg_pm.compression import CompressSettings
from mmseg_pm.errors import ConfigError
from tests.utils import DEMO, build_model


@pytest.mark.parametrize('bad', [dict(keep_rate=1.5), dict(prune_rate=-0.1),
                                 dict(score_iters=0), dict(allocation='local'),
                                 dict(overrides=dict(keep_rate=0.0)),
                                 dict(overrides=dict(nope=1))])
def test_bad_settings_refused_when_built(bad):
    with pytest.raises(ConfigError):
        HOOKS.build(dict(type='PMCompressHook', **bad))


def test_settings_resolved_against_pm_cfg():
    backbone = build_model(DEMO, init=False).backbone
    hook = HOOKS.build(dict(type='PMCompressHook', keep_rate=0.5, score_iters=3))
    assert hook.resolve_settings(backbone) == CompressSettings(keep_rate=0.5, score_iters=3)
    legacy = build_model(DEMO, init=False, pm_cfg=dict(mode='layer', keep_rate=0.4,
                                                       prune_rate=0.2)).backbone
    hook = HOOKS.build(dict(type='PMCompressHook', score_iters=3))
    assert hook.resolve_settings(legacy) == CompressSettings(keep_rate=0.4, prune_rate=0.2,
                                                             score_iters=3)
    hook = HOOKS.build(dict(type='PMCompressHook', keep_rate=0.6))
    with pytest.raises(ConfigError, match='keep_rate is set both on PMCompressHook'):
        hook.resolve_settings(legacy)
