"""Compare token-reduction methods on one uncompressed model at equal GFLOPs budgets,
training-free: mIoU, agreement with the uncompressed model, KL divergence, GFLOPs, latency.

Usage:
  python tools/analysis_tools/compare_methods.py CONFIG CHECKPOINT
         [--methods pm tome evit algm mstm] [--gflops 0.8 0.7 0.6] [--val-images N]
         [--flops-images 8] [--batch-size B] [--score-iters T] [--out DIR] [--data-root DIR]
         [--resume]
         [--plot miou|agreement] [--device cpu|cuda] [--threads T] [--tolerance 0.03]
         [--pm-prune-rate 0.1] [--warmup W] [--iters I] [--repeat R] [--seed S]
         [--no-progress] [--cfg-options k=v ...]

CONFIG / CHECKPOINT: the user's uncompressed mmseg model whose backbone is a plain ViT
(mmseg's VisionTransformer, or ours). For every method and budget (a fraction of the
uncompressed GFLOPs) the method's own knob is searched until the GFLOPs are within
--tolerance (3%) of the budget, and the value found is printed: keep_rate (pm, evit, mstm),
r of ToMe's decreasing schedule (r, -1), ALGM's local threshold (GFLOPs = mean over the
validation images, its token count depends on the image). The compressed model keeps the
uncompressed weights (Prune-and-Merge: --score-iters scoring batches of the training split,
then the global structure search; no finetuning) and is measured on the first --val-images
validation images. A budget a method cannot reach gives a row saying why; the other methods
still run. Writes DIR/compare.json (every row as soon as it is measured, atomically: an
interrupted run keeps its rows and --resume skips them), DIR/compare.md and DIR/compare.png
(the --plot metric against GFLOPs and against latency). Definitions:
mmseg_pm/analysis/compare.py, evaluate.py, knobs.py.
"""
from mmseg_pm.utils.cli import ArgumentParser, ConfigOptions, quiet_logging, run_cli

METHODS = ('pm', 'tome', 'evit', 'algm', 'mstm')


def parse_args():
    parser = ArgumentParser(description='Token-reduction methods at equal GFLOPs budgets '
                            '(training-free)')
    parser.add_argument('config', help='config of the uncompressed model (plain ViT backbone)')
    parser.add_argument('checkpoint', help='its checkpoint (loaded strictly)')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS,
                        help='methods to compare (default: all)')
    parser.add_argument('--gflops', nargs='+', type=float, default=[0.8, 0.7, 0.6],
                        metavar='FRACTION', help='budgets as fractions of the uncompressed '
                        'GFLOPs (default: 0.8 0.7 0.6)')
    parser.add_argument('--val-images', type=int, help='first N validation images (default: '
                        'all)')
    parser.add_argument('--flops-images', type=int, default=8, help='the first N validation '
                        'images give the GFLOPs (per-image methods: their mean) and the knob '
                        'search (default 8)')
    parser.add_argument('--batch-size', type=int, default=1, help='latency batch size '
                        '(default 1)')
    parser.add_argument('--score-iters', type=int, default=102, help='Prune-and-Merge scoring '
                        'batches of the training split (default 102, the official count)')
    parser.add_argument('--out', default='work_dirs/compare_methods', help='output folder '
                        '(default work_dirs/compare_methods)')
    parser.add_argument('--data-root', help='data root of the train / val datasets')
    parser.add_argument('--resume', action='store_true', help='continue DIR/compare.json: '
                        'rows already there are kept and not measured again')
    parser.add_argument('--plot', default='miou', choices=['miou', 'agreement'],
                        help='y axis of compare.png (agreement for a barely trained model)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]'")
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--tolerance', type=float, default=0.03, help='accepted relative '
                        'GFLOPs error (default 0.03)')
    parser.add_argument('--pm-prune-rate', type=float, default=0.1, help='Prune-and-Merge '
                        'prune rate, fixed while keep_rate is searched (default 0.1)')
    parser.add_argument('--warmup', type=int, default=2, help='latency: untimed forwards')
    parser.add_argument('--iters', type=int, default=5, help='latency: timed forwards per '
                        'model and round')
    parser.add_argument('--repeat', type=int, default=2, help='latency: rounds (ABBA)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the scoring pass')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    return parser.parse_args()


def main():
    args = parse_args()
    import torch

    from mmseg_pm.analysis.compare import CompareSettings, run_comparison
    from mmseg_pm.errors import UserError

    quiet_logging()
    settings = CompareSettings(
        config=args.config, checkpoint=args.checkpoint, out_dir=args.out,
        methods=args.methods, budgets=args.gflops, val_images=args.val_images,
        flops_images=args.flops_images,
        batch_size=args.batch_size, score_iters=args.score_iters,
        pm_prune_rate=args.pm_prune_rate, tolerance=args.tolerance,
        cfg_options=args.cfg_options, data_root=args.data_root, device=args.device,
        warmup=args.warmup, iters=args.iters, repeat=args.repeat, seed=args.seed,
        resume=args.resume, plot_metric=args.plot, progress=not args.no_progress)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f'--threads must be >= 1, got {args.threads}')
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    run_comparison(settings)
    print(f'\nwrote {args.out}/compare.json, compare.md, compare.png')


if __name__ == '__main__':
    run_cli(main)
