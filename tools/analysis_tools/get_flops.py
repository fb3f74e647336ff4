"""GFLOPs and parameters of a segmentor (backbone, neck, decode head, total) at a fixed input.

Usage:
  python tools/analysis_tools/get_flops.py CONFIG [CHECKPOINT] [--shape H W]
         [--keep-rate R [--prune-rate P] [--seed S]] [--images N] [--data-root DIR]
         [--out result.json] [--cfg-options k=v ...]

Counts with mmengine.analysis on the segmentor's tensor-mode forward for one image; one
multiply-add = one FLOP; fused attention counted as its two matmuls. For a token-reducing
model both conventions are printed: "M/R counted" (every reduction op included) and "M/R not
counted" (the model's blocks and heads only, the official Prune-and-Merge convention), plus the
token counts. A method whose token count depends on the image (ALGM) is counted on ``--images``
real test images (mean, min, max). Without a checkpoint the weights are random (FLOPs of
static methods do not depend on them) and a Prune-and-Merge config is counted uncompressed,
unless --keep-rate installs a uniform structure from random scores: a labelled estimate.
"""
import os.path as osp

from mmseg_pm.utils.cli import (ArgumentParser, ConfigOptions, check_output_file, config_name,
                                parse_shape, quiet_logging, run_cli)


def parse_args():
    parser = ArgumentParser(
        description='GFLOPs / params of a segmentor (1 multiply-add = 1 FLOP)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (a Prune-and-Merge structure '
                        'is installed while loading, strictly)')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H W',
                        help='input size in pixels (default: the crop / backbone img_size)')
    parser.add_argument('--keep-rate', type=float, help='Prune-and-Merge estimate without a '
                        'compressed checkpoint: uniform structure from random scores')
    parser.add_argument('--prune-rate', type=float, help='with --keep-rate (default 0)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random scores')
    parser.add_argument('--images', type=int, default=8, help='real test images to count a '
                        'method whose token count depends on the image (default 8)')
    parser.add_argument('--data-root', help='data root of the test images')
    parser.add_argument('--out', help='write the result as JSON here')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    return parser.parse_args()


def main():
    args = parse_args()
    from mmseg_pm.analysis import (count_flops, count_flops_over_images, format_flops_report,
                                   load_images, load_segmentor, preprocess)
    from mmseg_pm.analysis.build import check_shape_fits, default_input_shape
    from mmseg_pm.compression import CompressSettings, random_structures
    from mmseg_pm.errors import UserError
    from mmseg_pm.models.backbones import reduction_backbone
    from mmseg_pm.utils.io import save_json
    from mmseg_pm.utils.preflight import set_data_root

    quiet_logging()
    if args.prune_rate is not None and args.keep_rate is None:
        raise UserError('--prune-rate needs --keep-rate')
    if args.images < 1:
        raise UserError(f'--images must be >= 1, got {args.images}')
    if args.out:
        check_output_file(args.out, '--out', inputs=[args.config, args.checkpoint])
    shape = parse_shape(args.shape)
    model = load_segmentor(args.config, args.checkpoint, args.cfg_options)
    label = None
    if args.keep_rate is not None:
        settings = CompressSettings(keep_rate=args.keep_rate, prune_rate=args.prune_rate or 0.0)
        label = random_structures(model, settings, args.seed)
    if shape is not None:
        check_shape_fits(model, shape)
    backbone = reduction_backbone(model)
    reducer = backbone.reducer if backbone is not None and backbone.is_reducing else None
    if reducer is not None and not reducer.static:
        if args.data_root:
            set_data_root(model.cfg, args.data_root)
        size = shape or default_input_shape(model, model.cfg)
        images = preprocess(model, load_images(model.cfg, args.images, size))
        result = count_flops_over_images(model, images, structure=label)
    else:
        result = count_flops(model, shape, structure=label)
    result['config'] = osp.abspath(args.config)
    result['checkpoint'] = osp.abspath(args.checkpoint) if args.checkpoint else None
    title = f'{config_name(args.config)}' + (f' + {osp.basename(args.checkpoint)}'
                                             if args.checkpoint else ' (random weights)')
    print(format_flops_report(result, title))
    if getattr(backbone, 'pm', None) is not None and not result['compressed']:
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
