"""The outputs of a method comparison (:mod:`mmseg_pm.analysis.compare`): the markdown table,
the two-panel plot and the three result files, each written atomically."""
import os.path as osp
from typing import List, Optional

from ..utils.io import atomic_write, save_json, save_text
from ..utils.markdown import fmt as _fmt
from ..utils.markdown import markdown_table
from .knobs import LABELS, METHODS

#: plotted metrics: row field, axis label, scale to percent
PLOT_METRICS = {
    'miou': ('miou', 'mIoU (%)', 1.0),
    'agreement': ('agreement', "pixel agreement with the uncompressed model (%)", 100.0),
}
#: the PNG's size in pixels (width, height)
FIGURE_SIZE = (1200, 480)


def sorted_rows(rows: List[dict]) -> List[dict]:
    """The uncompressed row first, then the methods in ``METHODS`` order (others after),
    budgets from the largest down."""
    order = {m: i for i, m in enumerate(('uncompressed', ) + METHODS)}
    return sorted(rows, key=lambda r: (order.get(r['method'], len(order)), r['method'],
                                       -(r.get('budget') or 0)))


def knob_text(row: dict) -> Optional[str]:
    """``'r=13'`` / ``'keep_rate=0.5625'`` for a row with a knob value."""
    knob = row.get('knob') or {}
    if knob.get('value') is None:
        return None
    value = knob['value']
    return f'{knob["name"]}={value:g}' if isinstance(value, float) else f'{knob["name"]}={value}'


def compare_table(rows: List[dict]) -> str:
    """Markdown table of comparison rows (one line per method and budget; see
    :func:`mmseg_pm.analysis.compare.Comparison` for the fields)."""
    body = []
    for r in sorted_rows(rows):
        ok = r.get('status') == 'ok'
        lat = (r.get('latency_ms') or {}).get('median')
        body.append([
            LABELS.get(r['method'], r['method']),
            f'{100 * r["budget"]:.0f}%' if r.get('budget') is not None else None,
            knob_text(r), _fmt(r.get('gflops'), '.3f'),
            _fmt(100 * r['gflops_fraction'], '.1f') if r.get('gflops_fraction') else None,
            _fmt(r.get('miou'), '.2f') if ok else None,
            _fmt(100 * r['agreement'], '.2f') if ok and r.get('agreement') is not None else None,
            _fmt(r.get('kl'), '.4f') if ok else None,
            _fmt(lat, '.1f') if ok else None, _fmt(r.get('speedup'), '.3f') if ok else None,
            r.get('status', '') if ok else f'{r.get("status")}: {r.get("reason")}'])
    header = ['method', 'budget', 'knob', 'GFLOPs', '% of uncompressed', 'mIoU (%)',
              'agreement (%)', 'KL (nats)', 'latency (ms)', 'speed-up', 'status']
    return markdown_table(header, body, align='ll' + 'l' + 'r' * 7 + 'l')


def protocol_summary(doc: dict) -> str:
    """A few lines stating what was measured and how."""
    p = doc['protocol']
    lat = p['latency']
    machine = (p.get('sessions') or [{}])[-1].get('machine', {})
    return '\n'.join([
        f'Model: {p["config"]} with {p["checkpoint"]}; crop {p["crop"][0]}x{p["crop"][1]}; '
        f'uncompressed {doc["uncompressed_gflops"]:.3f} GFLOPs.',
        f'Budgets: {p["budget"]}. GFLOPs: {p["gflops"]}.',
        f'Validation: {p["val"]["images"]} images of the {p["val"]["split"]} split '
        f'({p["val"]["data_root"]}), the config\'s test pipeline and test_cfg. '
        f'mIoU: {p["metrics"]["miou"]}. Agreement: {p["metrics"]["agreement"]}. '
        f'KL: {p["metrics"]["kl"]}.',
        f'Latency: {lat["forward"]}; batch {lat["batch"]}, {lat["precision"]}, '
        f'{lat["device"]} ({machine.get("gpu") or machine.get("cpu", "?")}, '
        f'{machine.get("threads", "?")} threads); {lat["order"]}; warmup {lat["warmup"]}, '
        f'{lat["iters"]} x {lat["repeat"]} timed forwards per model; speed-up = '
        f'uncompressed median / method median in the same run.',
        'Knobs: ' + '; '.join(f'{LABELS.get(m, m)}: {d}' for m, d in p['knobs'].items()) + '.',
        'Training-free: every compressed model has the uncompressed weights (no finetuning).'])


def compare_markdown(doc: dict) -> str:
    """The content of ``compare.md``: title, protocol summary, table, reasons."""
    return '\n\n'.join(['# Token-reduction methods at equal GFLOPs (training-free)',
                        protocol_summary(doc), compare_table(doc['rows'])]) + '\n'


def device_label(protocol: dict) -> str:
    """``'CPU fp32'`` / ``'GPU fp32'`` for the latency axis."""
    lat = protocol['latency']
    return f'{"GPU" if str(lat["device"]).startswith("cuda") else "CPU"} {lat["precision"]}'


def plot_comparison(doc: dict, path: str, metric: str = 'miou') -> str:
    """Write ``compare.png``: the metric against GFLOPs (left) and against measured latency
    (right), one line per method, the uncompressed model as a star; ``FIGURE_SIZE`` pixels.

    Args:
        doc (dict): the comparison document (``compare.json``).
        path (str): PNG path (written atomically).
        metric (str): ``'miou'`` or ``'agreement'`` (say which in the title).

    Returns:
        str: ``path``.

    Raises:
        ValueError: unknown metric.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    if metric not in PLOT_METRICS:
        raise ValueError(f'metric must be one of {sorted(PLOT_METRICS)}, got {metric!r}')
    field, ylabel, scale = PLOT_METRICS[metric]
    p = doc['protocol']
    dpi = 100
    fig = Figure(figsize=(FIGURE_SIZE[0] / dpi, FIGURE_SIZE[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    h, w = p['crop']
    batch = p['latency']['batch']
    xlabels = [f'GFLOPs per image at {h}x{w} (1 multiply-add = 1 FLOP)',
               f'latency per forward (ms, median; batch {batch}, {device_label(p)})']

    def xy(row, panel):
        y = row.get(field)
        x = row.get('gflops') if panel == 0 else (row.get('latency_ms') or {}).get('median')
        return (None, None) if x is None or y is None else (x, scale * y)

    rows = [r for r in doc['rows'] if r.get('status') == 'ok']
    base = next((r for r in rows if r['method'] == 'uncompressed'), None)
    methods = [m for m in METHODS if any(r['method'] == m for r in rows)]
    for panel, ax in enumerate(axes):
        for m in methods:
            pts = sorted(xy(r, panel) + (r['budget'], ) for r in rows if r['method'] == m
                         and xy(r, panel)[0] is not None)
            if pts:
                ax.plot([q[0] for q in pts], [q[1] for q in pts], marker='o', label=LABELS[m])
                for x, y, b in pts:
                    ax.annotate(f'{100 * b:.0f}%', (x, y), textcoords='offset points',
                                xytext=(4, 4), fontsize=7, alpha=0.7)
        if base is not None and xy(base, panel)[0] is not None:
            ax.plot(*xy(base, panel), marker='*', markersize=14, color='black', linestyle='',
                    label='uncompressed')
        ax.set_xlabel(xlabels[panel])
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc='best')
    which = 'mIoU' if metric == 'miou' else 'pixel agreement with the uncompressed model'
    fig.suptitle(f'{which} vs cost, training-free, {p["val"]["images"]} validation images '
                 f'({osp.basename(p["config"])})', fontsize=11)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=dpi))


def write_outputs(doc: dict, out_dir: str, metric: str = 'miou') -> None:
    """Write ``compare.json``, ``compare.md`` and ``compare.png`` into ``out_dir``, each
    atomically (the JSON first: it is what ``--resume`` reads)."""
    save_json(doc, osp.join(out_dir, 'compare.json'))
    save_text(compare_markdown(doc), osp.join(out_dir, 'compare.md'))
    plot_comparison(doc, osp.join(out_dir, 'compare.png'), metric)


__all__ = ['PLOT_METRICS', 'FIGURE_SIZE', 'sorted_rows', 'knob_text',
           'compare_table', 'protocol_summary', 'compare_markdown', 'plot_comparison',
           'write_outputs']
