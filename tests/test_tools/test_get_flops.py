"""tools/analysis_tools/get_flops.py on the tiny models (tests.utils.tiny_cfg)."""
import json

from tests.test_analysis.test_flops import N, P, pm_hand_count
from tests.utils import TINY_LAYERS, run_tool

TOOL = 'tools/analysis_tools/get_flops.py'


def test_compressed_checkpoint(tiny_files, tmp_path):
    out = tmp_path / 'flops.json'
    proc = run_tool(TOOL, tiny_files['config'], tiny_files['pm'], '--out', str(out))
    assert 'one multiply-add = one FLOP' in proc.stdout
    assert 'with the reduction ops (M/R) counted' in proc.stdout
    assert '| 0 | 16 | 8 | 4 | 4 | 9 |' in proc.stdout  # span N K merged pruned P+K
    result = json.loads(out.read_text())
    backbone, head = pm_hand_count([P + N // 2] * TINY_LAYERS)
    assert result['structure'] == 'checkpoint' and result['compressed']
    assert result['flops_mr_not_counted']['total'] == backbone + head
    assert result['checkpoint'] == tiny_files['pm']


def test_estimate_and_other_methods(tiny_files):
    """A Prune-and-Merge config without a structure: --keep-rate estimates (labelled); any
    other reducer is counted as it is (ToMe)."""
    proc = run_tool(TOOL, tiny_files['config'], '--keep-rate', '0.5')
    assert 'random uniform (keep_rate=0.5, prune_rate=0; estimate)' in proc.stdout
    assert '(random weights)' in proc.stdout
    proc = run_tool(TOOL, tiny_files['tome_config'], tiny_files['tome'])
    assert 'Token reduction: ToMe' in proc.stdout
    assert 'Tokens entering blocks 0..1: 17, 13.' in proc.stdout
