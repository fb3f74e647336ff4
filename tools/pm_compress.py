"""Compress a trained segmentor: scoring pass + global structure search -> compressed checkpoint.

Usage:
    python tools/pm_compress.py CONFIG CHECKPOINT --out OUT.pth [--score-iters N]
        [--keep-rate R] [--prune-rate P] [--work-dir DIR] [--data-root DIR]
        [--cfg-options k=v ...] [--no-eval] [--debug]

CONFIG is a Prune-and-Merge config (backbone PruneMergeViT with a pm_cfg and a PMCompressHook,
e.g. configs/pm_segmenter_vit-s_ade20k.py), CHECKPOINT the uncompressed model. The compression
settings come from the config's PMCompressHook, overridden by the flags. Writes OUT.pth (the
student only, strictly loadable into a model built from CONFIG; ``meta.pm_structure`` holds
the structure) and OUT.json (table, settings, raw scores), both atomically; prints the
structure table, GFLOPs before/after (M/R counted and not counted) and, if a validation set is
configured, the mIoU of the compressed model before any finetuning (the paper's "near winning
ticket"). Peak memory does not grow with the number of scoring iterations.
"""
import copy
import os.path as osp

from mmseg_pm.compat import prepare_cfg
from mmseg_pm.errors import UserError
from mmseg_pm.utils.cli import ArgumentParser, ConfigOptions, check_output_file, run_cli
from mmseg_pm.utils.preflight import check_checkpoint, read_config, set_data_root


def parse_args():
    parser = ArgumentParser(description='Prune-and-Merge compression of a checkpoint')
    parser.add_argument('config', help='Prune-and-Merge config file')
    parser.add_argument('checkpoint', help='uncompressed checkpoint')
    parser.add_argument('--out', required=True, help='compressed checkpoint to write (.pth)')
    parser.add_argument('--score-iters', type=int, help='scoring iterations (default: config)')
    parser.add_argument('--keep-rate', type=float, help='keep_rate in (0, 1] (default: config)')
    parser.add_argument('--prune-rate', type=float, help='prune_rate in [0, 1)')
    parser.add_argument('--work-dir', help='logs go here (default: next to --out)')
    parser.add_argument('--data-root', help='data root of the train and val datasets')
    parser.add_argument('--no-eval', action='store_true', help='skip the mIoU evaluation')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    return parser.parse_args()


def main():
    args = parse_args()
    if not args.out.endswith('.pth'):
        raise UserError(f'--out must end with .pth, got {args.out}')
    check_output_file(args.out, '--out', inputs=[args.checkpoint])
    check_checkpoint(args.checkpoint, 'checkpoint')
    cfg = read_config(args.config, args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    cfg.work_dir = args.work_dir or osp.join(osp.dirname(osp.abspath(args.out)),
                                             'pm_compress_logs')
    hooks = [h for h in cfg.get('custom_hooks') or [] if h.get('type') == 'PMCompressHook']
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks') or [] if h not in hooks]
    cfg.load_from, cfg.resume, cfg.launcher = args.checkpoint, False, 'none'
    evaluate = not args.no_eval and cfg.get('val_dataloader') and cfg.get('val_cfg')
    if not evaluate:
        cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    prepare_cfg(cfg)

    from mmseg.registry import HOOKS

    from mmseg_pm.compression import compress_segmentor
    from mmseg_pm.engine.preflight import check_compress_run

    # the hook's own settings (its deprecated ``overrides=`` included), as tools/train.py uses
    hook_settings = HOOKS.build(copy.deepcopy(hooks[0])).settings if hooks else {}
    settings = check_compress_run(cfg, hook_settings, dict(
        score_iters=args.score_iters, keep_rate=args.keep_rate, prune_rate=args.prune_rate))

    from mmengine.runner import Runner

    from mmseg_pm.analysis.flops import count_flops
    from mmseg_pm.analysis.report import format_flops_report
    from mmseg_pm.engine.cleanup import discard_refused_run
    from mmseg_pm.utils.io import save_checkpoint, save_json
    with discard_refused_run(cfg.work_dir):  # bad input found while running: no logs left
        runner = Runner.from_cfg(cfg)
        checkpoint = runner.load_checkpoint(args.checkpoint, map_location='cpu')
        model = runner.model
        before = count_flops(model)
        data = runner.build_dataloader(cfg.train_dataloader, seed=runner.seed)
        report = compress_segmentor(model, data, settings)
        del data
        after = count_flops(model)
        meta = dict(pm_structure=report['structure'], pm_compress=report['settings'],
                    source_checkpoint=osp.abspath(args.checkpoint),
                    dataset_meta=checkpoint.get('meta', {}).get('dataset_meta'))
        save_checkpoint(dict(meta=meta, state_dict=model.state_dict()), args.out)
        report.update(flops_before=before, flops_after=after)
        save_json(report, osp.splitext(args.out)[0] + '.json')
        print(report['table'])
        print(format_flops_report(before, 'Uncompressed:'))
        print(format_flops_report(after, 'Compressed:'))
        g0, g1 = before['flops']['total'] / 1e9, after['flops_mr_counted']['total'] / 1e9
        print(f'GFLOPs (1 multiply-add = 1 FLOP, {before["input_shape"][2]}x'
              f'{before["input_shape"][3]}): uncompressed {g0:.3f}, compressed {g1:.3f} with M/R '
              f'counted ({100 * (1 - g1 / g0):.1f}% fewer), '
              f'{after["flops_mr_not_counted"]["total"] / 1e9:.3f} without')
        print(f'Wrote {args.out} and {osp.splitext(args.out)[0]}.json')
        if evaluate:
            metrics = runner.val()
            print('mIoU of the compressed model before finetuning (%): '
                  + ', '.join(f'{k}={float(v):.2f}' for k, v in metrics.items()
                              if getattr(v, 'size', 1) == 1))


if __name__ == '__main__':
    run_cli(main)
