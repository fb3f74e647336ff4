"""tools/dataset_converters/prepare_ade20k_sample.py (and its old path): the 38-image sample
linked as 30 train / 8 val; a synthetic set, said loudly, without the default sample."""
import os
import os.path as osp

import pytest

from tests.utils import SAMPLE, run_tool

pytestmark = pytest.mark.e2e  # runs the tool on the real sample's images

NEW = 'tools/dataset_converters/prepare_ade20k_sample.py'


def counts(root):
    return {(kind, split): len(os.listdir(osp.join(root, kind, split)))
            for kind in ('images', 'annotations') for split in ('training', 'validation')}


@pytest.mark.parametrize('script', [NEW, 'tools/prepare_ade20k_sample.py'])
def test_links_the_sample(script, tmp_path):
    proc = run_tool(script, '--src', SAMPLE, '--out', str(tmp_path / 'out'))
    root = tmp_path / 'out' / 'ADEChallengeData2016'
    assert '30 train / 8 val' in proc.stdout and proc.stderr == ''
    assert set(counts(root).values()) == {30, 8}
    assert counts(root)[('images', 'validation')] == 8
    first = sorted(os.listdir(osp.join(SAMPLE, 'images', 'validation')))[0]
    link = root / 'images' / 'validation' / first  # every 5th sorted pair is val, from 0
    assert link.is_symlink() and os.readlink(link) == osp.join(SAMPLE, 'images', 'validation',
                                                               first)
    # again: the same result (the old folder replaced)
    run_tool(script, '--src', SAMPLE, '--out', str(tmp_path / 'out'))
    assert set(counts(root).values()) == {30, 8}


def test_synthetic_without_the_default_sample(tmp_path):
    proc = run_tool(NEW, '--out', str(tmp_path / 'out'),
                    env=dict(MMSEG_PM_SAMPLE=str(tmp_path / 'missing')))
    assert 'WARNING: generating a SYNTHETIC ADE20K-format set' in proc.stderr
    assert 'synthetic set: 30 train / 8 val' in proc.stdout
    root = tmp_path / 'out' / 'ADEChallengeData2016'
    assert set(counts(root).values()) == {30, 8}
    assert not any(p.is_symlink() for p in (root / 'images' / 'training').iterdir())
