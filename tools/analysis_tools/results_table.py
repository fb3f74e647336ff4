"""Efficiency table of the shipped configs: each Prune-and-Merge model beside its baseline.

Usage:
  python tools/analysis_tools/results_table.py [--models s t] [--batch-sizes 1 8]
         [--warmup 2] [--iters 5] [--repeat 2] [--threads T] [--data-root DIR]
         [--checkpoint CONFIG_STEM=PATH ...] [--no-benchmark] [--out results.json]

For every size (T, S, B, L) it pairs ``configs/segmenter_vit-<size>_ade20k*.py`` (baseline) with
``configs/pm_segmenter_vit-<size>_ade20k*.py`` and reports GFLOPs in both conventions (M/R
counted / not counted; one multiply-add = one FLOP) and CPU fp32 latency / throughput at the
configs' crop (512x512; 640x640 for L) for each batch size, measured with
:func:`mmseg_pm.analysis.benchmark.benchmark_pair` (real test images, tensor-mode forward,
baseline and compressed interleaved). A compressed model without a checkpoint
(``--checkpoint pm_segmenter_vit-s_ade20k=work_dirs/.../iter_N.pth``) gets a uniform structure
from random scores at its config's keep_rate / prune_rate, labelled "random uniform (estimate)".
Accuracy (mIoU) columns say "needs full ADE20K + GPU": they come from tools/test.py on the full
validation set with trained checkpoints, not from this script.
"""
import argparse
import os.path as osp

from mmseg_pm.utils import UserError, run_cli, save_json

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PAIRS = {
    't': ('segmenter_vit-t_ade20k.py', 'pm_segmenter_vit-t_ade20k.py'),
    's': ('segmenter_vit-s_ade20k.py', 'pm_segmenter_vit-s_ade20k.py'),
    'b': ('segmenter_vit-b_ade20k.py', 'pm_segmenter_vit-b_ade20k.py'),
    'l': ('segmenter_vit-l_ade20k-640.py', 'pm_segmenter_vit-l_ade20k-640.py'),
}
ACCURACY = 'needs full ADE20K + GPU'


def parse_args():
    parser = argparse.ArgumentParser(description='GFLOPs / CPU latency table, PM vs baseline')
    parser.add_argument('--models', nargs='+', default=['s', 't'], choices=sorted(PAIRS),
                        help='sizes to report (default: s t)')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--repeat', type=int, default=2)
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--data-root', help='test images from here instead of the configs\' '
                        'data root (e.g. data/ade20k_sample/ADEChallengeData2016)')
    parser.add_argument('--checkpoint', nargs='+', default=[], metavar='CONFIG_STEM=PATH',
                        help='checkpoints by config stem, e.g. pm_segmenter_vit-s_ade20k=x.pth')
    parser.add_argument('--no-benchmark', action='store_true', help='GFLOPs only')
    parser.add_argument('--mr-iters', type=int, default=1,
                        help='instrumented forwards for the M/R time share (0: skip)')
    parser.add_argument('--out', help='write every number as JSON here')
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args()


def parse_checkpoints(items):
    """``['stem=path', ...]`` -> {stem: path}.

    Raises:
        UserError: an item without '='.
    """
    out = {}
    for item in items:
        if '=' not in item:
            raise UserError(f'--checkpoint takes CONFIG_STEM=PATH, got {item!r}')
        stem, path = item.split('=', 1)
        out[osp.splitext(osp.basename(stem))[0]] = path
    return out


def flops_only(config, checkpoint, keep_rate):
    """(count_flops result, structure label) of one config, no timing."""
    from mmseg_pm.analysis import count_flops, install_uniform_structure, load_segmentor
    model = load_segmentor(config, checkpoint)
    label = install_uniform_structure(model, keep_rate) if keep_rate is not None else None
    return count_flops(model, structure=label)


def _pm_rates(config):
    from mmseg_pm.analysis import load_config
    cfg = load_config(config)
    pm_cfg = cfg.model.backbone.get('pm_cfg') or {}
    return pm_cfg.get('keep_rate', 0.6), pm_cfg.get('prune_rate', 0.0)


def main():
    args = parse_args()
    from mmseg_pm.analysis import gflops
    from mmseg_pm.analysis.benchmark import benchmark_pair, protocol_text
    from mmseg_pm.analysis.common import quiet_logging

    quiet_logging()
    checkpoints = parse_checkpoints(args.checkpoint)
    results, protocol = {}, None
    for size in args.models:
        base_name, pm_name = PAIRS[size]
        base_cfg, pm_cfg = (osp.join(REPO, 'configs', n) for n in (base_name, pm_name))
        base_stem, pm_stem = (osp.splitext(n)[0] for n in (base_name, pm_name))
        base_ckpt, pm_ckpt = checkpoints.get(base_stem), checkpoints.get(pm_stem)
        keep_rate, prune_rate = _pm_rates(pm_cfg)
        random_keep = None if pm_ckpt else keep_rate
        if args.no_benchmark:
            results[size] = dict(flops={base_stem: flops_only(base_cfg, base_ckpt, None),
                                        pm_stem: flops_only(pm_cfg, pm_ckpt, random_keep)},
                                 rows=[], keep_rate=keep_rate, prune_rate=prune_rate)
            continue
        try:
            res = benchmark_pair(pm_cfg, pm_ckpt, base_cfg, base_ckpt, args.batch_sizes,
                                 args.warmup, args.iters, args.repeat, ('fp32', ), 'cpu',
                                 args.threads, None, random_keep, None, 0, args.data_root,
                                 None, args.mr_iters, progress=not args.no_progress)
        except UserError as e:
            if 'data root' in str(e) or 'image folder' in str(e):
                raise UserError(f'{e} (results_table: --data-root DIR takes the test images '
                                f'from elsewhere, e.g. the sample, or --no-benchmark gives '
                                f'GFLOPs only)') from e
            raise
        protocol = res['protocol']
        names = list(res['models'])
        res['flops'] = {base_stem: res['flops'][names[0]], pm_stem: res['flops'][names[1]]}
        for row in res['rows']:
            row['stem'] = base_stem if row['name'] == names[0] else pm_stem
        res.update(keep_rate=keep_rate, prune_rate=prune_rate)
        results[size] = res

    bs = args.batch_sizes
    head = ['model', 'keep rate', 'structure', 'GFLOPs (M/R counted)',
            'GFLOPs (M/R not counted)', 'params (M)']
    for b in ([] if args.no_benchmark else bs):
        head += [f'bs{b} latency ms (IQR)', f'bs{b} img/s', f'bs{b} speed-up',
                 f'bs{b} efficiency']
    head += ['mIoU SS', 'mIoU MS']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for size in args.models:
        res = results[size]
        for stem, f in res['flops'].items():
            compressed = stem.startswith('pm_')
            cells = [stem, f'{res["keep_rate"]:g}' if compressed else '1', f['structure'],
                     f'{gflops(f["flops_mr_counted"]["total"]):.2f}',
                     f'{gflops(f["flops_mr_not_counted"]["total"]):.2f}',
                     f'{f["params"]["total"] / 1e6:.2f}']
            for b in ([] if args.no_benchmark else bs):
                row = next(r for r in res['rows'] if r['stem'] == stem and r['batch'] == b)
                lat = row['latency_ms']
                cells += [f'{lat["median"]:.0f} ({lat["iqr"]:.0f})',
                          f'{row["throughput_img_s"]:.2f}', f'{row["speedup"]:.2f}',
                          f'{row["efficiency"]:.2f}' if compressed else '–']
            cells += [ACCURACY, ACCURACY]
            lines.append('| ' + ' | '.join(cells) + ' |')
    if protocol:
        print(protocol_text(protocol))
    print('GFLOPs: mmengine.analysis, one multiply-add = one FLOP, per image at the crop; '
          '"M/R not counted" is the official convention. Efficiency = speed-up / GFLOPs ratio '
          '(M/R counted). "random uniform (estimate)": no compressed checkpoint was given, so '
          'every unit holds K = N * keep_rate tokens chosen by random scores (timing / FLOPs '
          'only; accuracy needs the trained model).')
    print()
    print('\n'.join(lines))
    if args.out:
        save_json(dict(protocol=protocol, results=results), args.out)
        print(f'\nwrote {args.out}')


if __name__ == '__main__':
    run_cli(main)
