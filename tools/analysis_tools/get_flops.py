"""GFLOPs and parameters of a segmentor (backbone, neck, decode head, total) at a fixed input.

Usage:
  python tools/analysis_tools/get_flops.py CONFIG [CHECKPOINT] [--shape H W]
         [--keep-rate R [--prune-rate P] [--seed S]] [--out result.json] [--cfg-options k=v ...]

Counts with mmengine.analysis on the segmentor's tensor-mode forward for one image; one
multiply-add = one FLOP. For a compressed Prune-and-Merge model (a checkpoint carrying a
structure, or --keep-rate) both conventions are printed: "M/R counted" (every merge /
reconstruct included) and "M/R not counted" (the official convention), plus the per-unit token
counts. Without a checkpoint the weights are random (FLOPs do not depend on them) and a
Prune-and-Merge config is counted uncompressed, unless --keep-rate installs a uniform structure
from random scores in every unit: a quick estimate, labelled as such.
"""
import argparse
import os.path as osp

from mmengine.config import DictAction

from mmseg_pm.utils import UserError, run_cli, save_json


def parse_args():
    parser = argparse.ArgumentParser(
        description='GFLOPs / params of a segmentor (1 multiply-add = 1 FLOP)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (its Prune-and-Merge '
                        'structure is installed while loading, strictly)')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H W',
                        help='input size in pixels (default: the backbone img_size / crop)')
    parser.add_argument('--keep-rate', type=float, help='estimate without a compressed '
                        'checkpoint: uniform structure from random scores, K = N * keep rate '
                        'in every unit')
    parser.add_argument('--prune-rate', type=float,
                        help='with --keep-rate (default: the config pm_cfg.prune_rate)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random scores')
    parser.add_argument('--out', help='write the result as JSON here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    return parser.parse_args()


def main():
    args = parse_args()
    from mmseg_pm.analysis import (count_flops, format_flops_report, get_backbone,
                                   install_uniform_structure, load_segmentor)
    from mmseg_pm.analysis.common import config_name, parse_shape, quiet_logging

    quiet_logging()

    if args.prune_rate is not None and args.keep_rate is None:
        raise UserError('--prune-rate needs --keep-rate')
    model = load_segmentor(args.config, args.checkpoint, args.cfg_options)
    label = None
    if args.keep_rate is not None:
        label = install_uniform_structure(model, args.keep_rate, args.prune_rate, args.seed)
    shape = parse_shape(args.shape)
    backbone = get_backbone(model)
    if shape is not None and backbone is not None and backbone.is_compressed:
        crop = tuple(s * backbone.patch_size for s in backbone.structure_grid)
        if tuple(shape) != crop:
            raise UserError(f'a compressed model runs at its fixed crop {crop[0]}x{crop[1]} '
                            f'(the structure\'s token count); --shape {shape[0]} {shape[1]} '
                            f'does not apply')
    result = count_flops(model, shape, structure=label)
    result['config'] = osp.abspath(args.config)
    result['checkpoint'] = osp.abspath(args.checkpoint) if args.checkpoint else None
    title = f'{config_name(args.config)}' + (f' + {osp.basename(args.checkpoint)}'
                                              if args.checkpoint else ' (random weights)')
    print(format_flops_report(result, title))
    if backbone is not None and len(backbone.pm) and not result['compressed']:
        print('\nNote: this Prune-and-Merge model holds no structure, so the count is the '
              'uncompressed one; give a compressed checkpoint, or --keep-rate R for an estimate.')
    if label:
        print(f'\nNote: structure = {label}: uniform K in every unit from random scores, not a '
              f'searched (global) structure.')
    if args.out:
        save_json(result, args.out)
        print(f'\nwrote {args.out}')


if __name__ == '__main__':
    run_cli(main)
