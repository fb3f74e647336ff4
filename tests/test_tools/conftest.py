"""Fixtures of the tool tests: checkpoints of the demo configs and of tiny analysis models.

``REPO`` is re-exported for ``test_distributed.py`` (``from conftest import REPO``); new tests
import helpers from :mod:`tests.utils`.
"""
import pytest

from tests.utils import (BASELINE, DEMO, REPO, build_model, compress_randomly,  # noqa: F401
                         run_tool, save_checkpoint, tiny_cfg)


@pytest.fixture(scope='session')
def demo_checkpoints(tmp_path_factory):
    """Random-weight checkpoints around the demo config (ViT-T, 256 px crops).

    ``compressed``: the demo model with a structure from random scores; ``uncompressed``: the
    demo model without structure; ``baseline``: the uncompressed twin config's model
    (:data:`tests.utils.BASELINE`); ``other_arch``: the demo model at embed_dims 64 (another
    architecture).
    """
    out = tmp_path_factory.mktemp('demo_ckpts')
    files = dict(
        uncompressed=save_checkpoint(build_model(DEMO), out / 'uncompressed.pth'),
        compressed=save_checkpoint(compress_randomly(build_model(DEMO)), out / 'compressed.pth'),
        baseline=save_checkpoint(build_model(BASELINE), out / 'baseline.pth'),
        other_arch=save_checkpoint(build_model(DEMO, embed_dims=64, num_heads=2),
                                   out / 'other_arch.pth'))
    return files


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
