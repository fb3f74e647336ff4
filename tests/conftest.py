"""Shared fixtures: seeds, the real ADE20K sample, tiny model factories."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmseg.utils import register_all_modules

import mmseg_pm  # noqa: F401  (registers the package, applies the stack fixes)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
register_all_modules(init_default_scope=True)
SAMPLE = os.environ.get('MMSEG_PM_SAMPLE',
                        osp.join(osp.dirname(REPO), 'shared', 'data', 'ade20k_sample'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope='session')
def sample_root(tmp_path_factory):
    """The real sample linked as 30 train / 8 val (tools/prepare_ade20k_sample.py)."""
    assert osp.isdir(SAMPLE), f'the ADE20K sample is missing: {SAMPLE}'
    out = tmp_path_factory.mktemp('ade20k_sample')
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'prepare_ade20k_sample.py'),
                    '--src', SAMPLE, '--out', str(out)], check=True)
    return str(out / 'ADEChallengeData2016')


def run_tool(*args, cwd=REPO, check=True, env=None):
    """Run ``python tools/<args>`` and return the CompletedProcess (text output)."""
    e = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=e)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n'
                             f'{proc.stderr[-4000:]}')
    return proc
