"""tools/pm_compress.py: scoring + search on an uncompressed checkpoint -> a compressed
checkpoint that loads strictly into the config's model."""
import json

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from tests.utils import (DEMO, REPO, assert_one_line_error, listing, quiet, run_tool,
                         run_tool_forked)

pytestmark = pytest.mark.e2e
TOOL = 'tools/pm_compress.py'


def test_compress_writes_a_strictly_loadable_checkpoint(demo_checkpoints, sample_root,
                                                        tmp_path):
    out = tmp_path / 'compressed.pth'
    proc = run_tool(TOOL, DEMO, demo_checkpoints['uncompressed'], '--out', str(out),
                    '--score-iters', '1', '--keep-rate', '0.5', '--data-root', sample_root,
                    '--cfg-options', 'val_dataloader.dataset.indices=2')
    assert '| block(s) | N | K |' in proc.stdout and 'with M/R counted' in proc.stdout
    assert 'mIoU of the compressed model before finetuning (%)' in proc.stdout
    record = json.load(open(tmp_path / 'compressed.json'))
    assert sum(r['K'] for r in record['rows']) == 128 * 12
    assert record['settings']['keep_rate'] == 0.5 and record['settings']['prune_rate'] == 0.1
    ckpt = torch.load(out, map_location='cpu', weights_only=False)
    assert ckpt['meta']['pm_structure']['units'][0]['num_groups'] == record['rows'][0]['K']
    quiet()
    fresh = MODELS.build(Config.fromfile(f'{REPO}/{DEMO}').model)
    fresh.load_state_dict(ckpt['state_dict'], strict=True)
    assert fresh.backbone.is_compressed

    # compressing a compressed checkpoint is refused with one line, before anything is written
    before = listing(tmp_path)
    proc = run_tool_forked(TOOL, DEMO, str(out), '--out', str(tmp_path / 'again.pth'),
                           '--data-root', sample_root, '--no-eval')
    assert_one_line_error(proc, 'compressed.pth is already compressed')
    assert listing(tmp_path) == before


def test_compress_reads_the_hooks_deprecated_overrides(demo_checkpoints, sample_root, tmp_path):
    """``PMCompressHook(overrides=...)`` (deprecated) counts in pm_compress as in training."""
    out = tmp_path / 'compressed.pth'
    run_tool(TOOL, DEMO, demo_checkpoints['uncompressed'], '--out', str(out),
             '--score-iters', '1', '--data-root', sample_root, '--no-eval',
             '--cfg-options', 'custom_hooks.0.overrides.keep_rate=0.7')
    record = json.load(open(tmp_path / 'compressed.json'))
    assert record['settings']['keep_rate'] == 0.7
