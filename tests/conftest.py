"""Shared fixtures: seeds and the real ADE20K sample. Helpers live in :mod:`tests.utils`."""
import os.path as osp

import pytest
import torch
from mmseg.utils import register_all_modules

import mmseg_pm  # noqa: F401  (registers the package, applies the stack fixes)

from .utils import REPO, SAMPLE, run_tool

register_all_modules(init_default_scope=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope='session')
def sample_root(tmp_path_factory):
    """The real sample linked as 30 train / 8 val (tools/prepare_ade20k_sample.py)."""
    assert osp.isdir(SAMPLE), f'the ADE20K sample is missing: {SAMPLE}'
    out = tmp_path_factory.mktemp('ade20k_sample')
    run_tool(osp.join(REPO, 'tools', 'dataset_converters', 'prepare_ade20k_sample.py'),
             '--src', SAMPLE, '--out', str(out))
    return str(out / 'ADEChallengeData2016')
