"""The README's efficiency table: every method on Segmenter ViT-S 512 beside mmseg's stock model
and our uncompressed model, GFLOPs and latency at batch 1 and 8, measured in one interleaved run.

Usage:
  python tools/analysis_tools/results_table.py [--batch-sizes 1 8] [--warmup 2] [--iters 5]
         [--repeat 2] [--threads T] [--data-root DIR] [--checkpoint CONFIG_STEM=PATH ...]
         [--precision fp32 ...] [--device cpu] [--out results.json] [--markdown results.md]

Rows: mmseg's stock Segmenter ViT-S (explicit attention), ours uncompressed (fused attention),
and the shipped configs of every method at GFLOPs matched to the Prune-and-Merge main config
(pm_segmenter_vit-s_ade20k, tome_, evit_, algm_, mstm_segmenter_vit-s_ade20k_kr0.6). Weights:
the baseline checkpoint if given (``--checkpoint segmenter_vit-s_ade20k=PATH``), else random
(timing and FLOPs of the static methods do not depend on them; ALGM's token count does, so its
GFLOPs on random weights are an estimate). Prune-and-Merge without its compressed checkpoint gets
a uniform structure from random scores at the config's keep / prune rates, labelled as an
estimate. Accuracy (mIoU) needs the full ADE20K validation set and trained checkpoints
(tools/test.py); this table says so instead of printing numbers.
"""
import os.path as osp

from mmseg_pm.utils.cli import ArgumentParser, check_output_file, quiet_logging, run_cli

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BASELINE = 'segmenter_vit-s_ade20k'
METHODS = ['pm_segmenter_vit-s_ade20k', 'tome_segmenter_vit-s_ade20k',
           'evit_segmenter_vit-s_ade20k', 'algm_segmenter_vit-s_ade20k',
           'mstm_segmenter_vit-s_ade20k_kr0.6']
ACCURACY = 'needs full ADE20K + GPU'


def parse_args():
    parser = ArgumentParser(description='Efficiency table of every method (GFLOPs, latency)')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--repeat', type=int, default=2)
    parser.add_argument('--precision', nargs='+', default=['fp32'],
                        choices=['fp32', 'bf16', 'fp16'])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--data-root', help='test images from here instead of the configs\' '
                        'data root (e.g. data/ade20k_sample/ADEChallengeData2016)')
    parser.add_argument('--checkpoint', nargs='+', default=[], metavar='CONFIG_STEM=PATH',
                        help='checkpoints by config stem, e.g. segmenter_vit-s_ade20k=x.pth')
    parser.add_argument('--reduction-iters', type=int, default=1,
                        help='profiled forwards for the reduction time share (0: skip)')
    parser.add_argument('--out', help='write every number as JSON here')
    parser.add_argument('--markdown', help='write the protocol and the table here')
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args()


def table(result: dict, batch_sizes) -> str:
    """One line per model: method, settings, GFLOPs (both conventions), params and per batch
    size latency (IQR), img/s, speed-up vs ours uncompressed and vs mmseg stock, efficiency."""
    from mmseg_pm.utils.markdown import markdown_table
    head = ['model', 'method', 'structure / settings', 'GFLOPs (M/R counted)',
            'GFLOPs (not counted)', 'params (M)']
    for b in batch_sizes:
        head += [f'bs{b} ms (IQR)', f'bs{b} img/s', f'bs{b} speed-up', f'bs{b} vs stock',
                 f'bs{b} efficiency', f'bs{b} reduction time']
    head.append('mIoU')
    body = []
    for name, info in result['models'].items():
        f = result['flops'][name]
        rows = [r for r in result['rows'] if r['name'] == name]
        per_image = f.get('per_image')
        cells = [name, info['method'] or '–', info['structure'],
                 f'{rows[0]["gflops_mr_counted"]:.2f}'
                 + (f' ({per_image["min"]:.1f}-{per_image["max"]:.1f})' if per_image else ''),
                 f'{f["flops_mr_not_counted"]["total"] / 1e9:.2f}',
                 f'{f["params"]["total"] / 1e6:.2f}']
        for b in batch_sizes:
            r = next(r for r in rows if r['batch'] == b)
            lat = r['latency_ms']
            cells += [f'{lat["median"]:.0f} ({lat["iqr"]:.0f})', f'{r["throughput_img_s"]:.2f}',
                      f'{r["speedup"]:.2f}', f'{r["speedup_vs_stock"]:.2f}',
                      f'{r["efficiency"]:.2f}' if r.get('efficiency') else '–',
                      f'{100 * r["reduction_time"]["fraction"]:.1f}%' if r.get('reduction_time')
                      else '–']
        cells.append(ACCURACY)
        body.append(cells)
    return markdown_table(head, body, align='lll' + 'r' * (len(head) - 3))


def main():
    args = parse_args()
    import torch

    from mmseg_pm.analysis import BenchmarkSpec, protocol_text
    from mmseg_pm.analysis.build import load_config
    from mmseg_pm.analysis.suite import build_entries, compare, comparison_entries
    from mmseg_pm.errors import UserError
    from mmseg_pm.utils.io import save_json, save_text

    quiet_logging()
    for path in (args.out, args.markdown):
        if path:
            check_output_file(path, 'output file')
    checkpoints = {}
    for item in args.checkpoint:
        if '=' not in item:
            raise UserError(f'--checkpoint takes CONFIG_STEM=PATH, got {item!r}')
        stem, path = item.split('=', 1)
        checkpoints[osp.splitext(osp.basename(stem))[0]] = path
    spec = BenchmarkSpec(batch_sizes=tuple(args.batch_sizes), precisions=tuple(args.precision),
                         warmup=args.warmup, iters=args.iters, repeat=args.repeat,
                         device=args.device, reduction_iters=args.reduction_iters,
                         progress=not args.no_progress)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    configs = [osp.join(REPO, 'configs', f'{m}.py') for m in METHODS]
    entries = comparison_entries(osp.join(REPO, 'configs', f'{BASELINE}.py'), configs)
    pm = load_config(configs[0])
    hook = next(h for h in pm.custom_hooks if h['type'] == 'PMCompressHook')
    models = build_entries(entries, checkpoints.get(BASELINE), checkpoints,
                           keep_rate=hook['keep_rate'], prune_rate=hook['prune_rate'],
                           device=args.device)
    result = compare(entries, models, pm, spec, data_root=args.data_root)
    text = (protocol_text(result['protocol']) + '\n\nGFLOPs: mmengine.analysis, one '
            'multiply-add = one FLOP, per image at 512x512, fused attention counted as its '
            'matmuls; "M/R counted" includes every token-reduction op, "not counted" the blocks '
            'and heads only; ALGM (per-image token count): mean over the images (min-max). '
            'Speed-up = ours uncompressed (fused) latency / model latency; vs stock = mmseg\'s '
            'stock model latency / model latency; efficiency = speed-up / GFLOPs ratio; '
            'reduction time = wall time in the token reducer\'s steps (merge / restore, '
            'scoring, matching; ReductionTimer over the profiled forwards) as a share of those '
            'forwards. '
            '"random uniform (estimate)": no compressed checkpoint, so every Prune-and-Merge unit '
            'holds K = N * keep_rate tokens chosen by random scores.\n\n'
            + table(result, args.batch_sizes))
    print(text)
    if args.out:
        save_json(result, args.out)
        print(f'\nwrote {args.out}')
    if args.markdown:
        save_text(text + '\n', args.markdown)
        print(f'wrote {args.markdown}')


if __name__ == '__main__':
    run_cli(main)
