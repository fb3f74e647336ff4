"""The latency benchmark (mmseg_pm.analysis.benchmark), its report and peak memory, in process
on tiny models."""
import pytest
import torch

from mmseg_pm.analysis import BenchmarkSpec, benchmark_table, protocol_text, run_benchmark
from mmseg_pm.analysis.benchmark import autocast, latency_stats
from mmseg_pm.analysis.memory import forward_peak_memory, peak_memory
from mmseg_pm.errors import UserError
from tests.utils import TINY_CROP, build_model, compress_randomly, tiny_cfg


def test_latency_stats():
    s = latency_stats([0.001, 0.002, 0.003, 0.004, 0.005])
    assert s['median'] == pytest.approx(3.0) and s['n'] == 5
    assert s['q25'] == pytest.approx(2.0) and s['q75'] == pytest.approx(4.0)
    assert s['iqr'] == pytest.approx(2.0) and s['min'] == pytest.approx(1.0)
    assert latency_stats([0.002])['iqr'] == 0


@pytest.mark.parametrize('bad, match', [
    (dict(batch_sizes=(0, )), 'batch sizes >= 1'), (dict(iters=0), 'iters >= 1'),
    (dict(precisions=('fp16', )), '--precision fp16 needs a GPU'),
    (dict(precisions=('int8', )), 'precision must be one of')])
def test_spec_is_validated(bad, match):
    with pytest.raises(UserError, match=match):
        BenchmarkSpec(**bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason='no CUDA device visible')
def test_cuda_device_without_gpu():
    with pytest.raises(UserError, match='no CUDA device is visible'):
        BenchmarkSpec(device='cuda')


def test_bf16_autocast_on_cpu():
    with autocast('cpu', 'bf16'):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_run_benchmark_rows_and_report():
    base = build_model(tiny_cfg(plain=True))
    pm = compress_randomly(build_model(tiny_cfg()), 0.5, 0.25)
    x = torch.randn(2, 3, TINY_CROP, TINY_CROP)
    spec = BenchmarkSpec(batch_sizes=(1, 3), warmup=1, iters=2, repeat=2, reduction_iters=1,
                         progress=False)
    result = run_benchmark(dict(base=base, pm=pm), dict(base=x, pm=x), spec,
                           roles=dict(base='uncompressed', pm='compressed'))
    rows = result['rows']
    assert [(r['name'], r['batch']) for r in rows] == [('base', 1), ('pm', 1), ('base', 3),
                                                       ('pm', 3)]
    for r in rows:
        assert r['latency_ms']['n'] == 4 and r['input_size'] == [TINY_CROP, TINY_CROP]
        assert r['memory']['peak_mib'] > 0
        assert r['speedup_vs_stock'] is None  # no stock row
    assert all(r['speedup'] == 1 and r['reduction_time'] is None for r in rows[::2])
    assert all(0 < r['reduction_time']['fraction'] < 1 for r in rows[1::2])
    assert result['protocol']['reference'] == 'base' and result['protocol']['stock'] is None
    assert result['protocol']['samples_per_setting'] == 4
    text = protocol_text(result['protocol'])
    assert text.startswith('Protocol:') and 'batch 1/3' in text
    table = benchmark_table(rows)
    assert table.count('\n') == 1 + len(rows) and '| base | uncompressed | 1 | fp32 |' in table


def test_peak_memory_counts_the_forward():
    model = build_model(tiny_cfg())
    mem = forward_peak_memory(model, torch.randn(1, 3, TINY_CROP, TINY_CROP), 'cpu',
                              lambda: autocast('cpu', 'fp32'))
    assert mem['kind'] in ('rss_peak', 'rss_process_peak') and mem['peak_mib'] > 0
    big = peak_memory(lambda: torch.ones(64, 2**20).sum(), 'cpu')  # 256 MiB
    if big['forward_mib'] is not None:
        assert big['forward_mib'] > 200
