"""Latency / throughput of token-reduction models against mmseg's stock model and our
uncompressed model, on real images, all interleaved in one run.

Usage:
  python tools/analysis_tools/benchmark.py CONFIG [CHECKPOINT] --baseline BASE_CONFIG
         [BASE_CHECKPOINT] [--also CONFIG [CHECKPOINT]] ... [--batch-sizes 1 8]
         [--warmup N] [--iters N] [--repeat K] [--precision fp32 [bf16 ...]] [--compile]
         [--device cpu|cuda] [--threads T] [--shape H W] [--keep-rate R [--prune-rate P]]
         [--data-root DIR] [--out result.json] [--cfg-options k=v ...]

Rows: (a) mmseg's stock model of BASE_CONFIG (explicit attention), (b) the same weights in our
backbone without reduction (fused attention), (c) CONFIG and every --also config. Speed-up =
(b) latency / row latency (the token-reduction speed-up), speed-up vs mmseg stock = (a) / row
(what a user gains by switching), GFLOPs ratio = (b) GFLOPs / row GFLOPs, efficiency =
speed-up / GFLOPs ratio; plus the share of the forward spent in reduction ops and peak memory.
Models without a checkpoint take BASE_CHECKPOINT's weights (random without one: timing does
not depend on them); a Prune-and-Merge model without a compressed checkpoint needs
--keep-rate (a uniform structure from random scores, labelled as an estimate).
"""
from mmseg_pm.utils.cli import (ArgumentParser, ConfigOptions, check_output_file, parse_shape,
                                quiet_logging, run_cli)


def parse_args():
    parser = ArgumentParser(description='Benchmark token-reduction models against baselines')
    parser.add_argument('config', help='config of the (compressed) model')
    parser.add_argument('checkpoint', nargs='?', help='its checkpoint (optional)')
    parser.add_argument('--baseline', nargs='+', required=True,
                        metavar=('BASE_CONFIG', 'BASE_CHECKPOINT'),
                        help='uncompressed config [and checkpoint]: rows (a) and (b)')
    parser.add_argument('--also', nargs='+', action='append', default=[],
                        metavar=('CONFIG', 'CHECKPOINT'), help='another model to interleave')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--warmup', type=int, default=3, help='untimed forwards per model and '
                        'setting (default 3)')
    parser.add_argument('--iters', type=int, default=10, help='timed forwards per model and '
                        'round (default 10)')
    parser.add_argument('--repeat', type=int, default=3, help='rounds, ABBA (default 3)')
    parser.add_argument('--precision', nargs='+', default=['fp32'],
                        choices=['fp32', 'bf16', 'fp16'], help='autocast precision(s); fp16 '
                        'needs CUDA')
    parser.add_argument('--compile', action='store_true', help='torch.compile every model '
                        '(max abs diff to eager printed; skipped with a message if unavailable)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]'")
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H W',
                        help='input size (default: the crop / img_size)')
    parser.add_argument('--keep-rate', type=float, help='Prune-and-Merge models without a '
                        'compressed checkpoint: uniform structure from random scores')
    parser.add_argument('--prune-rate', type=float, default=0.0, help='with --keep-rate')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random scores')
    parser.add_argument('--data-root', help='test data root to take the images from')
    parser.add_argument('--reduction-iters', '--mr-iters', type=int, default=3,
                        help='profiled forwards for the time share of reduction ops (0: skip)')
    parser.add_argument('--out', help='write the JSON result here')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='overrides for every config, xxx=yyy format')
    return parser.parse_args()


def main():
    args = parse_args()
    import torch

    from mmseg_pm.analysis import BenchmarkSpec, benchmark_table, protocol_text
    from mmseg_pm.analysis.build import load_config
    from mmseg_pm.analysis.suite import build_entries, compare, comparison_entries
    from mmseg_pm.errors import UserError
    from mmseg_pm.utils.io import save_json

    quiet_logging()
    if len(args.baseline) > 2 or any(len(a) > 2 for a in args.also):
        raise UserError('--baseline and --also take CONFIG [CHECKPOINT]')
    spec = BenchmarkSpec(batch_sizes=tuple(args.batch_sizes), precisions=tuple(args.precision),
                         warmup=args.warmup, iters=args.iters, repeat=args.repeat,
                         device=args.device, compile=args.compile,
                         reduction_iters=args.reduction_iters, progress=not args.no_progress)
    if args.out:
        check_output_file(args.out, '--out')
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    shape = parse_shape(args.shape)
    models_args = [[args.config] + ([args.checkpoint] if args.checkpoint else [])] + args.also
    entries = comparison_entries(args.baseline[0], [m[0] for m in models_args],
                                 args.cfg_options)
    for entry, m in zip(entries[2:], models_args):
        entry.checkpoint = m[1] if len(m) > 1 else None
    models = build_entries(entries, args.baseline[1] if len(args.baseline) > 1 else None,
                           keep_rate=args.keep_rate, prune_rate=args.prune_rate,
                           seed=args.seed, device=args.device)
    cfg = load_config(args.config, args.cfg_options)
    result = compare(entries, models, cfg, spec, shape, args.data_root)
    print(protocol_text(result['protocol']))
    print()
    print(benchmark_table(result['rows']))
    for name, info in result['models'].items():
        if str(info['structure']).startswith('random'):
            print(f'\nNote: {name}: structure = {info["structure"]} (uniform K per unit from '
                  f'random scores; timing and FLOPs of a compressed model, no accuracy).')
    for row in result['rows']:
        if row.get('compile'):
            print(f'compile {row["name"]} (batch {row["batch"]}): {row["compile"]["message"]}')
    if args.out:
        save_json(result, args.out)
        print(f'\nwrote {args.out}')


if __name__ == '__main__':
    run_cli(main)
