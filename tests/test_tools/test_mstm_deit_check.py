"""tools/analysis_tools/mstm_deit_check.py: MSTM on timm DeiT-S (random weights), one quick run.

The numbers asserted do not depend on the weights: dense DeiT-S at 224 counts ~4.6 GFLOPs
(1 multiply-add = 1 FLOP), MSTM keep 0.7 at blocks 3/6/9 (fusion 'add') 30-40% fewer, and the
dense TokenReductionViT classifier reproduces timm's logits. Timing figures are only checked
for presence (one forward per model and round).
"""
import importlib.util
import json
import os.path as osp

import pytest
from tests.utils import REPO, run_tool

TOOL = 'tools/analysis_tools/mstm_deit_check.py'


def test_mstm_deit_check_quick(tmp_path):
    out = tmp_path / 'result.json'
    proc = run_tool(TOOL, '--iters', '1', '--batch-size', '1', '--rounds', '2', '--warmup',
                    '0', '--threads', '2', '--out', str(out))
    res = json.loads(out.read_text())
    assert res['parity']['passed'] and res['parity']['max_abs_diff'] <= 1e-4
    dense, mstm = res['models']['dense'], res['models']['mstm']
    assert 4.5 <= dense['flops']['gflops_mr_counted'] <= 4.7
    assert dense['flops']['gflops_mr_counted'] == dense['flops']['gflops_mr_not_counted']
    assert dense['flops']['tokens'] == [197] * 12
    assert mstm['flops']['tokens'] == [197] * 4 + [139] * 3 + [98] * 3 + [69] * 2
    for conv in ('mr_counted', 'mr_not_counted'):
        assert 30 <= res['gflops_fewer_pct'][conv] <= 40
    assert mstm['flops']['gflops_mr_counted'] >= mstm['flops']['gflops_mr_not_counted']
    for row in (dense, mstm):
        assert row['throughput_img_s'] > 0 and row['latency_ms']['n'] == 2
    assert res['throughput_ratio'] > 0
    assert res['protocol']['batch'] == 1 and res['protocol']['threads'] == 2
    assert res['paper']['dense_gflops'] == 4.6
    assert '| model | GFLOPs' in proc.stdout and 'not checked' in proc.stdout


def test_mstm_deit_check_bad_arguments(capsys):
    """Usage errors: one ``error:`` line, exit 2 (parsed in-process; the subprocess path of
    ``ArgumentParser.error`` is the same)."""
    spec = importlib.util.spec_from_file_location('mstm_deit_check', osp.join(REPO, TOOL))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for args, needle in ((('--keep-rate', '0'), '--keep-rate'),
                         (('--blocks', '3', '12'), '--blocks'),
                         (('--blocks', '3', '3'), '--blocks'),
                         (('--fusion', 'sum'), '--fusion'),
                         (('--batch-size', '0'), '--batch-size'),
                         (('--threads', '0'), '--threads')):
        with pytest.raises(SystemExit) as exc:
            tool.parse_args(list(args))
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith('error: ') and needle in err[0], err
