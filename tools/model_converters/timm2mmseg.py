"""Convert a timm ViT / DeiT / AugReg / MAE classification checkpoint to mmseg ViT keys.

Sources: AugReg ``vit_{tiny,small,base,large}_patch16_384``, DeiT
``deit_{tiny,small,base}_patch16_224`` (distilled variants: the distillation token, its
``pos_embed`` row and its head are dropped), MAE ViT-B (``vit_base_patch16_224.mae``, or the MAE
pretrain file with its decoder, which is dropped). The output ``{'state_dict': mmseg
VisionTransformer keys, 'meta': ...}`` is what ``pretrained=`` / ``init_cfg=dict(type=
'Pretrained', checkpoint=...)`` expects (PruneMergeViT also loads the timm file directly).

Usage: python tools/model_converters/timm2mmseg.py SRC DST [--img-size H W]
       [--patch-size P] [--src-img-size H W]

Prints what happened to every key; exit code 2 with one ``error: ...`` line on bad input.
"""
from mmseg_pm.converters import convert_timm_vit, patch_size_of
from mmseg_pm.converters.cli import Converted, convert_main, grid_arg
from mmseg_pm.utils import run_cli


def add_arguments(parser):
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='target input size: pos_embed is resampled to the (H/P, W/P) '
                             'grid (default: keep the source grid)')
    parser.add_argument('--patch-size', type=int,
                        help='target patch size (default: the source\'s)')
    parser.add_argument('--src-img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='source input size, needed only for a non-square source grid')


def convert(args, state_dict, extras, report):
    src_patch = patch_size_of(state_dict)
    out = convert_timm_vit(state_dict, grid_arg(args.img_size, args.patch_size or src_patch),
                           patch_size=args.patch_size,
                           src_grid=grid_arg(args.src_img_size, src_patch, '--src-img-size'),
                           report=report)
    return Converted(out, meta=dict(img_size=args.img_size),
                     what=' (mmseg VisionTransformer keys)')


def main(argv=None) -> int:
    """Convert SRC, write DST atomically, print the summary; returns the exit code."""
    return convert_main(
        argv, converter='timm2mmseg', formats=('timm',), expected='timm',
        description='Convert a timm ViT/DeiT/AugReg/MAE checkpoint to mmseg ViT keys',
        src_help='timm checkpoint (local file)', add_arguments=add_arguments, convert=convert)


if __name__ == '__main__':
    run_cli(main)
