"""Human-readable reports of the analysis results: FLOPs, benchmark protocol and tables."""
from typing import Dict, List

from ..utils.markdown import fmt as _fmt
from ..utils.markdown import markdown_table, span_label
from .flops import COMPONENTS, gflops


def format_flops_report(result: Dict, title: str = '') -> str:
    """Report of :func:`mmseg_pm.analysis.flops.count_flops`: GFLOPs and M params per
    component, both reduction conventions, per-unit tokens (Prune-and-Merge) or the token
    schedule, per-image spread when counted over images.

    Returns:
        str: a few lines and markdown tables.
    """
    f, p, shape = result['flops'], result['params'], result['input_shape']
    lines = [title] if title else []
    method = result.get('method')
    lines += [f'Input shape: {shape[1]}x{shape[2]}x{shape[3]} (batch 1); {result["convention"]}.',
              f'Token reduction: {method or "none"}; structure: {result["structure"]}'
              + (f'; representation {result["representation"]}'
                 if result.get('representation') else ''), '']
    rows = [[name, f'{gflops(f[name]):.3f}', f'{p[name] / 1e6:.3f}'] for name in COMPONENTS
            if f[name] or p[name]]
    rows.append(['**total (as counted)**', f'{gflops(f["total"]):.3f}',
                 f'{p["total"] / 1e6:.3f}'])
    lines.append(markdown_table(['component', 'GFLOPs', 'params (M)'], rows))
    if result['compressed']:
        c, n = result['flops_mr_counted'], result['flops_mr_not_counted']
        lines += ['', f'{method}: total {gflops(c["total"]):.3f} GFLOPs with the reduction ops '
                      f'(M/R) counted, {gflops(n["total"]):.3f} without; backbone '
                      f'{gflops(c["backbone"]):.3f} / {gflops(n["backbone"]):.3f}; reduction '
                      f'ops {gflops(result["mr_flops"]):.4f} GFLOPs '
                      f'({100 * result["mr_fraction"]:.2f}% of the counted total).']
        if result.get('tokens'):
            lines.append('Tokens entering blocks 0..{}: {}.'.format(
                len(result['tokens']) - 1, ', '.join(map(str, result['tokens']))))
    if result.get('units'):
        rows = [[span_label(u['span']) + ('' if u['active'] else ' (identity)'), u['N'], u['K'],
                 u['merged'], u['pruned'], u['tokens'], f'{gflops(u["mr_flops"]):.4f}']
                for u in result['units']]
        lines += ['', markdown_table(['span', 'N', 'K', 'merged', 'pruned',
                                      'tokens in span (P+K)', 'M/R GFLOPs'], rows)]
        if result.get('representation') == 'sparse':
            lines.append('(sparse M/R are a scatter-add and a gather, not seen by the counter: '
                         'added as (non-pruned patches) * C per merge and N * C per restore)')
    if result.get('per_image'):
        s = result['per_image']
        lines += ['', f'Per image ({s["n"]} images; the token count depends on the image): '
                      f'mean {s["mean"]:.3f}, min {s["min"]:.3f}, max {s["max"]:.3f} GFLOPs '
                      f'(M/R counted).']
    if result['unsupported_ops']:
        ops = ', '.join(f'{k.replace("aten::", "")} x{v}'
                        for k, v in sorted(result['unsupported_ops'].items()))
        lines += ['', f'Not counted (elementwise / gather / scatter): {ops}.']
    return '\n'.join(lines)


def protocol_text(protocol: dict) -> str:
    """One paragraph stating the measurement protocol of a benchmark result."""
    p = protocol
    hw = p.get('gpu') or p.get('cpu', '?')
    load = (f', 1-min load average {p["loadavg_1min_start"]:.2f} at the start and '
            f'{p["loadavg_1min"]:.2f} at the end' if p.get('loadavg_1min_start') is not None
            and 'loadavg_1min' in p else '')
    return (f'Protocol: {p["forward"]}; {p["input"]}; input {p["input_size"][0]}x'
            f'{p["input_size"][1]}; batch {"/".join(map(str, p["batch_sizes"]))}; precision '
            f'{"/".join(p["precisions"])}; device {p["device"]} ({hw}, torch {p["torch"]}, '
            f'{p["threads"]} threads{load}); {"torch.compile; " if p.get("compile") else ""}'
            f'warmup {p["warmup"]}, {p["iters"]} iters x {p["repeat"]} repeats per model and '
            f'setting ({p["order"]}; {p["timer"]}); latency = median and IQR per forward of '
            f'the batch; throughput = batch / median; speed-up = {p["speedup"]}; GFLOPs ratio '
            f'= {p["gflops_ratio"]}; efficiency = {p["efficiency"]}'
            + (f'; reduction time = {p["reduction_time"]}' if p.get('reduction_time') else '')
            + '.')


def benchmark_table(rows: List[dict]) -> str:
    """Markdown table of benchmark rows (one line per model and setting)."""
    body = []
    for r in rows:
        mem = r.get('memory') or {}
        mem_s = f'{mem["peak_mib"]:.0f}' if mem else None
        if mem.get('forward_mib') is not None:
            mem_s += f' (+{mem["forward_mib"]:.0f} fwd)'
        share = r.get('reduction_time')
        body.append([r['name'], r.get('role', ''), r['batch'], r['precision'],
                     _fmt(r.get('gflops_mr_counted'), '.3f'), f'{r["latency_ms"]["median"]:.1f}',
                     f'{r["latency_ms"]["iqr"]:.1f}', f'{r["throughput_img_s"]:.2f}',
                     _fmt(r.get('speedup'), '.3f'), _fmt(r.get('speedup_vs_stock'), '.3f'),
                     _fmt(r.get('gflops_ratio'), '.3f'), _fmt(r.get('efficiency'), '.3f'),
                     f'{100 * share["fraction"]:.2f}%' if share else None, mem_s])
    header = ['model', 'role', 'batch', 'precision', 'GFLOPs', 'latency median (ms)',
              'IQR (ms)', 'throughput (img/s)', 'speed-up vs uncompressed',
              'speed-up vs mmseg stock', 'GFLOPs ratio', 'efficiency', 'reduction time',
              'peak mem (MiB)']
    return markdown_table(header, body, align='llrl' + 'r' * 10)


__all__ = ['format_flops_report', 'protocol_text', 'benchmark_table']
