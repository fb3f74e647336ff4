"""Fixtures of the tool tests: tiny analysis models as files.

``REPO`` is re-exported for ``test_distributed.py`` (``from conftest import REPO``); new tests
import helpers from :mod:`tests.utils`.
"""
import pytest

from tests.utils import (REPO, build_model, compress_randomly, run_tool,  # noqa: F401
                         save_checkpoint, tiny_cfg)


@pytest.fixture(scope='session')
def tiny_files(tmp_path_factory, sample_root):
    """Tiny models (:func:`tests.utils.tiny_cfg`) as files, their data root the sample.

    ``config`` + ``pm`` (a uniform structure from random scores, keep 0.5, prune 0.25) /
    ``plain`` (no structure) checkpoints; ``tome_config`` + ``tome`` (ToMe, r=4 per block).
    """
    out = tmp_path_factory.mktemp('tiny')
    cfg = tiny_cfg(sample_root)
    cfg.dump(str(out / 'tiny.py'))
    model = build_model(cfg)
    files = dict(config=str(out / 'tiny.py'), dir=out, data_root=sample_root,
                 plain=save_checkpoint(model, out / 'plain.pth'),
                 pm=save_checkpoint(compress_randomly(model, 0.5, 0.25), out / 'pm.pth'))
    tome = tiny_cfg(sample_root, token_reduction=dict(type='ToMe', r=4))
    tome.dump(str(out / 'tiny_tome.py'))
    files.update(tome_config=str(out / 'tiny_tome.py'),
                 tome=save_checkpoint(build_model(tome), out / 'tome.pth'))
    return files
