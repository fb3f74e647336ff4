"""Latency / throughput of a (compressed) segmentor against its baseline, on real images.

Usage:
  python tools/analysis_tools/benchmark.py CONFIG [CHECKPOINT] --baseline BASE_CONFIG
         [BASE_CHECKPOINT] [--batch-sizes 1 8] [--warmup N] [--iters N] [--repeat K]
         [--precision fp32 [bf16 ...]] [--device cpu|cuda] [--threads T] [--shape H W]
         [--keep-rate R [--prune-rate P]] [--data-root DIR] [--out result.json]
         [--cfg-options k=v ...]

Times the segmentor's tensor-mode forward (eval, torch.no_grad) of both models on the same
real test-set images (resized to the crop, pre-processed before timing), the two models
interleaved in ABBA order; prints the protocol and a markdown table (latency median / IQR,
throughput, speed-up, GFLOPs both conventions, GFLOPs ratio, efficiency = speed-up / GFLOPs
ratio, share of time in the Prune-and-Merge ops, peak memory) and writes everything as JSON
with --out. Without checkpoints the weights are random (timing does not depend on them);
--keep-rate compresses CONFIG with a uniform structure from random scores when no compressed
checkpoint exists (labelled as an estimate in every output).
"""
import argparse

from mmengine.config import DictAction

from mmseg_pm.utils import UserError, run_cli, save_json


def parse_args():
    parser = argparse.ArgumentParser(description='Benchmark a segmentor against its baseline')
    parser.add_argument('config', help='config of the (compressed) model')
    parser.add_argument('checkpoint', nargs='?', help='its checkpoint (optional)')
    parser.add_argument('--baseline', nargs='+', required=True,
                        metavar=('BASE_CONFIG', 'BASE_CHECKPOINT'),
                        help='baseline config [and checkpoint]')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--warmup', type=int, default=3, help='untimed forwards per model and '
                        'setting (default 3)')
    parser.add_argument('--iters', type=int, default=10, help='timed forwards per model and '
                        'round (default 10)')
    parser.add_argument('--repeat', type=int, default=3, help='rounds, ABBA (default 3)')
    parser.add_argument('--precision', nargs='+', default=['fp32'],
                        choices=['fp32', 'bf16', 'fp16'], help='autocast precision(s)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]'")
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H W',
                        help='input size (default: the model\'s crop / img_size)')
    parser.add_argument('--keep-rate', type=float, help='no compressed checkpoint: install a '
                        'uniform structure from random scores (an estimate)')
    parser.add_argument('--prune-rate', type=float,
                        help='with --keep-rate (default: the config pm_cfg.prune_rate)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random scores')
    parser.add_argument('--data-root', help='test data root to take the images from '
                        '(default: the config\'s test_dataloader.dataset.data_root)')
    parser.add_argument('--mr-iters', type=int, default=3, help='instrumented forwards that '
                        'measure the time share of the M/R ops (0: skip)')
    parser.add_argument('--out', help='write the JSON result here')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='overrides for CONFIG (and BASE_CONFIG), xxx=yyy format')
    return parser.parse_args()


def main():
    args = parse_args()
    from mmseg_pm.analysis.benchmark import benchmark_pair, markdown_table, protocol_text
    from mmseg_pm.analysis.common import parse_shape, quiet_logging

    quiet_logging()
    if len(args.baseline) > 2:
        raise UserError('--baseline takes BASE_CONFIG [BASE_CHECKPOINT]')
    base_config = args.baseline[0]
    base_checkpoint = args.baseline[1] if len(args.baseline) > 1 else None
    result = benchmark_pair(
        args.config, args.checkpoint, base_config, base_checkpoint, args.batch_sizes,
        args.warmup, args.iters, args.repeat, args.precision, args.device, args.threads,
        parse_shape(args.shape), args.keep_rate, args.prune_rate, args.seed, args.data_root,
        args.cfg_options, args.mr_iters, progress=not args.no_progress)
    print(protocol_text(result['protocol']))
    print()
    print(markdown_table(result))
    for name, info in result['models'].items():
        if info['structure'].startswith('random'):
            print(f'\nNote: {name}: structure = {info["structure"]} (uniform K per unit from '
                  f'random scores; timing and FLOPs of a compressed model, no accuracy).')
    if args.out:
        save_json(result, args.out)
        print(f'\nwrote {args.out}')


if __name__ == '__main__':
    run_cli(main)
