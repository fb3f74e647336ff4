"""Compress a trained segmentor: scoring pass + global structure search -> compressed checkpoint.

Usage:
    python tools/pm_compress.py CONFIG CHECKPOINT --out OUT.pth [--score-iters N]
        [--keep-rate R] [--prune-rate P] [--work-dir DIR] [--cfg-options k=v ...] [--no-eval]

CONFIG is a Prune-and-Merge config (backbone PruneMergeViT with a pm_cfg, e.g.
configs/pm_segmenter_vit-s_ade20k.py), CHECKPOINT the uncompressed model. Writes OUT.pth (the
student only, strictly loadable into a model built from CONFIG; ``meta.pm_structure`` holds the
structure) and OUT.json (table, settings, raw scores), both atomically; prints the structure
table, GFLOPs before/after (M/R counted and not counted) and, if a validation set is configured,
the mIoU of the compressed model before any finetuning ("near winning ticket", method.md §3).
"""
import argparse
import os.path as osp

from mmengine.config import Config, DictAction

from mmseg_pm.utils import UserError, run_cli
from mmseg_pm.utils.preflight import check_checkpoint, check_config_path, check_dataset
from mmseg_pm.utils.runtime import prepare_cfg


def parse_args():
    parser = argparse.ArgumentParser(description='Prune-and-Merge compression of a checkpoint')
    parser.add_argument('config', help='Prune-and-Merge config file')
    parser.add_argument('checkpoint', help='uncompressed checkpoint')
    parser.add_argument('--out', required=True, help='compressed checkpoint to write (.pth)')
    parser.add_argument('--score-iters', type=int, help='scoring iterations (default: config)')
    parser.add_argument('--keep-rate', type=float, help='keep_rate in (0, 1] (default: config)')
    parser.add_argument('--prune-rate', type=float, help='prune_rate in [0, 1)')
    parser.add_argument('--work-dir', help='logs go here (default: next to --out)')
    parser.add_argument('--no-eval', action='store_true', help='skip the mIoU evaluation')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    return parser.parse_args()


def main():
    args = parse_args()
    check_config_path(args.config)
    check_checkpoint(args.checkpoint, 'checkpoint')
    if not args.out.endswith('.pth'):
        raise UserError(f'--out must end with .pth, got {args.out}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or osp.join(osp.dirname(osp.abspath(args.out)),
                                             'pm_compress_logs')
    cfg.load_from, cfg.resume = args.checkpoint, False
    cfg.launcher = 'none'
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] != 'PMCompressHook']
    prepare_cfg(cfg)
    check_dataset(cfg.train_dataloader.dataset, 'train')
    evaluate = not args.no_eval and cfg.get('val_dataloader') and cfg.get('val_cfg')
    if evaluate:
        check_dataset(cfg.val_dataloader.dataset, 'val')

    from mmengine.runner import Runner

    from mmseg_pm.analysis.flops import count_flops, format_flops_report
    from mmseg_pm.compression import compress_segmentor, get_pm_backbone
    from mmseg_pm.engine.hooks.pm_compress_hook import check_checkpoint_matches
    from mmseg_pm.utils.io import save_checkpoint, save_json
    runner = Runner.from_cfg(cfg)
    checkpoint = runner.load_checkpoint(args.checkpoint, map_location='cpu')
    model = runner.model
    check_checkpoint_matches(model, checkpoint)
    if get_pm_backbone(model).is_compressed:
        raise UserError(f'{args.checkpoint} is already compressed')
    before = count_flops(model)
    overrides = dict(score_iters=args.score_iters, keep_rate=args.keep_rate,
                     prune_rate=args.prune_rate)
    data = runner.build_dataloader(cfg.train_dataloader, seed=runner.seed)
    report = compress_segmentor(model, data, overrides)
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
    print(f'GFLOPs (1 multiply-add = 1 FLOP, {before["input_shape"][2]}x'
          f'{before["input_shape"][3]}): uncompressed {before["flops"]["total"] / 1e9:.3f}, '
          f'compressed {after["flops_mr_counted"]["total"] / 1e9:.3f} with M/R counted, '
          f'{after["flops_mr_not_counted"]["total"] / 1e9:.3f} without')
    print(f'Wrote {args.out} and {osp.splitext(args.out)[0]}.json')
    if evaluate:
        metrics = runner.val()
        print('mIoU of the compressed model before finetuning (%): '
              + ', '.join(f'{k}={float(v):.2f}' for k, v in metrics.items()
                          if getattr(v, 'size', 1) == 1))


if __name__ == '__main__':
    run_cli(main)
