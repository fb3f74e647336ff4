"""tools/analysis_tools/benchmark.py on the tiny models: rows (a) mmseg stock, (b) ours
uncompressed, (c) compressed, every field written."""
import json

import pytest

from tests.utils import TINY_CROP, run_tool

pytestmark = pytest.mark.e2e  # runs the tool on the real sample's images


def test_benchmark_writes_every_field(tiny_files, tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool('tools/analysis_tools/benchmark.py', tiny_files['config'], tiny_files['pm'],
                    '--baseline', tiny_files['baseline_config'], tiny_files['baseline'],
                    '--batch-sizes',
                    '1', '2', '--warmup', '1', '--iters', '2', '--repeat', '2', '--mr-iters',
                    '1', '--threads', '1', '--out', str(out))
    assert 'Protocol:' in proc.stdout and '| model |' in proc.stdout
    result = json.loads(out.read_text())
    proto = result['protocol']
    for key in ('input_size', 'batch_sizes', 'precisions', 'device', 'threads', 'warmup',
                'iters', 'repeat', 'cpu', 'torch', 'data_root', 'reference', 'stock'):
        assert key in proto, key
    assert proto['input_size'] == [TINY_CROP, TINY_CROP] and proto['threads'] == 1
    assert proto['data_root'] == tiny_files['data_root']
    rows = result['rows']
    assert [(r['role'], r['batch']) for r in rows] == [
        (role, b) for b in (1, 2) for role in ('stock', 'uncompressed', 'compressed')]
    for row in rows:
        for key in ('name', 'role', 'batch', 'precision', 'latency_ms', 'throughput_img_s',
                    'speedup', 'speedup_vs_stock', 'gflops_mr_counted',
                    'gflops_mr_not_counted', 'gflops_ratio', 'efficiency', 'memory',
                    'structure', 'config', 'checkpoint'):
            assert row[key] is not None, key
        lat = row['latency_ms']
        assert lat['n'] == 4 and lat['q25'] <= lat['median'] <= lat['q75']
        assert row['throughput_img_s'] == pytest.approx(1e3 * row['batch'] / lat['median'])
        assert row['memory']['peak_mib'] > 0
        assert row['efficiency'] == pytest.approx(row['speedup'] / row['gflops_ratio'])
    for row in rows:
        if row['role'] == 'stock':
            assert row['speedup_vs_stock'] == 1 and row['reduction_time'] is None
            assert row['checkpoint'] == tiny_files['baseline']
        elif row['role'] == 'uncompressed':
            assert row['speedup'] == 1 and row['gflops_ratio'] == 1
            assert row['reduction_time'] is None and row['checkpoint'] == tiny_files['baseline']
        else:
            assert row['structure'] == 'checkpoint' and row['checkpoint'] == tiny_files['pm']
            assert 0 < row['reduction_time']['fraction'] < 1
            assert row['gflops_ratio'] > 1.2
