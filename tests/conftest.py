"""Shared fixtures: seeds, the real ADE20K sample, checkpoints of the demo configs. Helpers
live in :mod:`tests.utils`."""
import os.path as osp

import pytest
import torch
from mmseg.utils import register_all_modules

import mmseg_pm  # noqa: F401  (registers the package, applies the stack fixes)

from .utils import (BASELINE, DEMO, REPO, SAMPLE, build_model, compress_randomly, run_tool,
                    save_checkpoint)

register_all_modules(init_default_scope=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope='session')
def sample_root(tmp_path_factory):
    """The real sample linked as 30 train / 8 val
    (tools/dataset_converters/prepare_ade20k_sample.py)."""
    assert osp.isdir(SAMPLE), f'the ADE20K sample is missing: {SAMPLE}'
    out = tmp_path_factory.mktemp('ade20k_sample')
    run_tool(osp.join(REPO, 'tools', 'dataset_converters', 'prepare_ade20k_sample.py'),
             '--src', SAMPLE, '--out', str(out))
    return str(out / 'ADEChallengeData2016')


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
