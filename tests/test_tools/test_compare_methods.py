"""tools/analysis_tools/compare_methods.py end to end on a tiny ViT (embed 64, 4 blocks, 2 heads,
128 px crop, random weights) and the real ADE20K sample: every method at a reachable and an
unreachable budget, the plot, an interrupted run resumed to the same rows, and bad input."""
import json
import os

import numpy as np
import pytest
import torch
from tests.utils import run_tool, write_tiny_vit
from PIL import Image

from mmseg_pm.analysis.build import build_segmentor, load_config, segmentor_cfg

TOOL = 'tools/analysis_tools/compare_methods.py'
METHODS = ('pm', 'tome', 'evit', 'algm', 'mstm')
BUDGETS = (0.8, 0.05)  # 0.05: below what any method reaches on this model
#: fields that do not depend on the machine's speed (everything but timing)
MEASURED = ('key', 'method', 'budget', 'status', 'reason', 'knob', 'token_reduction', 'pm',
            'gflops', 'gflops_fraction', 'gflops_error', 'gflops_per_image', 'tokens', 'miou',
            'aacc', 'agreement', 'kl', 'images', 'labelled_pixels', 'kl_positions')

pytestmark = pytest.mark.e2e


@pytest.fixture(scope='module')
def tiny(tmp_path_factory, sample_root):
    return write_tiny_vit(tmp_path_factory.mktemp('tiny_vit'), sample_root)


def compare(tiny, out, *extra, env=None, check=True):
    config, checkpoint = tiny
    return run_tool(TOOL, config, checkpoint, '--out', str(out), '--val-images', '2',
                    '--score-iters', '2', '--batch-size', '1', '--threads', '1',
                    '--warmup', '1', '--iters', '2', '--repeat', '1', '--plot', 'agreement',
                    '--no-progress', '--gflops', *map(str, BUDGETS), *extra, env=env,
                    check=check)


def rows_by_key(path):
    with open(path) as f:
        return {r['key']: r for r in json.load(f)['rows']}


def measured(row):
    return {k: row.get(k) for k in MEASURED}


@pytest.fixture(scope='module')
def full_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp('full') / 'out'
    proc = compare(tiny, out)
    return out, proc


def test_every_method_at_every_budget(full_run):
    out, proc = full_run
    assert sorted(os.listdir(out)) == ['compare.json', 'compare.md', 'compare.png']
    with open(out / 'compare.json') as f:
        doc = json.load(f)
    rows = {r['key']: r for r in doc['rows']}
    assert set(rows) == {'uncompressed'} | {f'{m}@{b:g}' for m in METHODS for b in BUDGETS}
    base = doc['uncompressed_gflops']
    for m in METHODS:
        ok = rows[f'{m}@0.8']
        assert ok['status'] == 'ok', ok['reason']
        assert abs(ok['gflops'] / (0.8 * base) - 1) <= 0.03
        assert ok['gflops'] == pytest.approx(ok['gflops_fraction'] * base)
        assert ok['knob']['value'] is not None and ok['knob']['evaluations']
        assert 0 <= ok['agreement'] <= 1 and ok['kl'] >= 0 and ok['miou'] is not None
        assert ok['latency_ms']['median'] > 0 and ok['speedup'] > 0
        # the value found is printed
        assert f'{m}@0.8: {ok["knob"]["name"]}=' in proc.stdout
        low = rows[f'{m}@0.05']
        assert low['status'] == 'unreachable'
        assert 'strongest reduction' in low['reason'] and 'above the target' in low['reason']
    assert rows['algm@0.8']['gflops_per_image']['n'] == 2  # per-image count: the mean of 2
    assert rows['tome@0.8']['token_reduction']['r'][0] >= rows['tome@0.8']['token_reduction'][
        'r'][-1] == 0  # decreasing schedule
    assert rows['pm@0.8']['pm']['score_iters'] == 2
    unc = rows['uncompressed']
    assert unc['agreement'] == 1.0 and unc['kl'] == 0.0 and unc['gflops'] == base
    p = doc['protocol']
    assert p['settings']['val_images'] == 2 and p['val']['images'] == 2
    assert p['versions']['mmseg'] and p['sessions'][0]['machine']['cpu']
    with Image.open(out / 'compare.png') as im:
        assert im.format == 'PNG' and im.size == (1200, 480)
        assert np.asarray(im.convert('L')).var() > 0
    md = (out / 'compare.md').read_text()
    assert '| ToMe | 80% | r=' in md and 'unreachable' in md


def test_interrupted_run_resumes_to_the_same_rows(tiny, full_run, tmp_path):
    out = tmp_path / 'out'
    # stop (like a kill: no clean-up) once two rows are written: uncompressed and pm@0.8
    proc = compare(tiny, out, env={'MMSEG_PM_COMPARE_STOP_AFTER': '2'}, check=False)
    assert proc.returncode == 75, proc.stderr[-2000:]
    first = rows_by_key(out / 'compare.json')
    assert set(first) == {'uncompressed', 'pm@0.8'}
    again = compare(tiny, out, check=False)  # without --resume: refused, file untouched
    assert again.returncode == 2 and '--resume' in again.stderr.strip().splitlines()[-1]
    assert rows_by_key(out / 'compare.json') == first
    resumed = compare(tiny, out, '--resume')
    assert 'resume: 2 rows' in resumed.stdout
    rows = rows_by_key(out / 'compare.json')
    for key, row in first.items():  # kept as they were: not measured again
        assert rows[key] == row
    reference = rows_by_key(full_run[0] / 'compare.json')
    assert set(rows) == set(reference)
    for key in reference:  # pm@0.05 is re-scored after the restart: same scores, same row
        assert measured(rows[key]) == measured(reference[key]), key
    with open(out / 'compare.json') as f:
        assert len(json.load(f)['protocol']['sessions']) == 2


def assert_refused(proc, out, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith('error: ')
    for needle in needles:
        assert needle in line, line
    assert not os.path.exists(out)  # nothing left behind


def test_checkpoint_that_does_not_fit(tiny, tmp_path):
    config, _ = tiny
    wide = tmp_path / 'wide.py'  # the same model 96 wide
    wide.write_text(f"_base_ = [{config!r}]\nmodel = dict(backbone=dict(embed_dims=96), "
                    f"decode_head=dict(in_channels=96, channels=96, embed_dims=96))\n")
    model = build_segmentor(segmentor_cfg(load_config(str(wide))))
    checkpoint = tmp_path / 'wide.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    out = tmp_path / 'out'
    proc = run_tool(TOOL, config, str(checkpoint), '--out', str(out), check=False)
    assert_refused(proc, out, 'does not fit the config', 'backbone.cls_token',
                   'checkpoint (1, 1, 96) vs model (1, 1, 64)')


def test_backbone_that_is_not_a_plain_vit(tiny, tmp_path):
    config, checkpoint = tiny
    resnet = tmp_path / 'resnet.py'
    resnet.write_text(f"_base_ = [{config!r}]\nmodel = dict(backbone=dict(_delete_=True, "
                      f"type='ResNetV1c', depth=18))\n")
    out = tmp_path / 'out'
    proc = run_tool(TOOL, str(resnet), checkpoint, '--out', str(out), check=False)
    assert_refused(proc, out, "the backbone is 'ResNetV1c'",
                   'supports plain ViT backbones: VisionTransformer')


def test_output_folder_that_is_not_writable(tiny, tmp_path):
    config, checkpoint = tiny
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    out = blocker / 'out'
    proc = run_tool(TOOL, config, checkpoint, '--out', str(out), check=False)
    assert_refused(proc, out, '--out', 'is a file, not a directory')
    if os.geteuid() != 0:  # mode bits stop everyone but root
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o500)
        out = locked / 'out'
    else:  # root: a file system that refuses writes
        out = '/sys/mmseg_pm_compare'
    proc = run_tool(TOOL, config, checkpoint, '--out', str(out), check=False)
    assert_refused(proc, out, '--out', 'is not writable')
