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
import argparse
import os.path as osp

from mmseg_pm.converters.checkpoint import (CheckpointFormatError, ConversionReport,
                                              convert_timm_vit, detect_format,
                                              grid_from_img_size, read_checkpoint,
                                              wrong_format_message)
from mmseg_pm.errors import UserError
from mmseg_pm.utils import run_cli, save_checkpoint
from mmseg_pm.utils.preflight import check_checkpoint


def parse_args(argv=None):
    """Command line (``argv`` None: ``sys.argv``)."""
    parser = argparse.ArgumentParser(
        description='Convert a timm ViT/DeiT/AugReg/MAE checkpoint to mmseg ViT keys')
    parser.add_argument('src', help='timm checkpoint (local file)')
    parser.add_argument('dst', help='output file (written atomically)')
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='target input size: pos_embed is resampled to the (H/P, W/P) '
                             'grid (default: keep the source grid)')
    parser.add_argument('--patch-size', type=int,
                        help='target patch size (default: the source\'s)')
    parser.add_argument('--src-img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='source input size, needed only for a non-square source grid')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Convert SRC, write DST atomically, print the summary; returns the exit code.

    Raises:
        UserError: bad input (missing file, another format, unsupported keys).
    """
    args = parse_args(argv)
    check_checkpoint(args.src, 'source checkpoint')
    try:
        state_dict, _ = read_checkpoint(args.src)
        fmt = detect_format(state_dict)
        if fmt != 'timm':
            raise UserError(wrong_format_message(args.src, fmt, 'timm'))
        weight = state_dict.get('patch_embed.proj.weight')
        src_patch = int(weight.shape[-1]) if weight is not None and weight.dim() == 4 else 16
        report = ConversionReport(fmt)
        out = convert_timm_vit(state_dict,
                               grid_from_img_size(args.img_size, args.patch_size or src_patch),
                               args.patch_size, grid_from_img_size(args.src_img_size, src_patch),
                               report=report)
    except (CheckpointFormatError, ValueError) as e:
        raise UserError(str(e)) from None
    meta = dict(converter='timm2mmseg', source=osp.abspath(args.src), source_format=fmt,
                img_size=args.img_size, notes=report.notes)
    path = save_checkpoint(dict(state_dict=out, meta=meta), args.dst)
    print(report.summary())
    print(f'saved {len(out)} tensors (mmseg VisionTransformer keys) to {path}')
    return 0


if __name__ == '__main__':
    run_cli(main)
