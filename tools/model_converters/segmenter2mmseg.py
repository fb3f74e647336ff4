"""Convert an official rstrudel/segmenter checkpoint to mmseg ``EncoderDecoder`` keys.

``encoder.*`` becomes ``backbone.*`` (mmseg ``VisionTransformer``, ``final_norm=True``; the
encoder's ImageNet head is dropped), the mask-transformer decoder ``decode_head.*``
(``SegmenterMaskTransformerHead``; ``proj_patch`` / ``proj_classes`` are transposed into
``nn.Linear`` weights), the linear decoder an ``FCNHead`` ``conv_seg``. The output
``{'state_dict': ..., 'meta': ...}`` loads with ``load_from`` into a Segmenter config of the same
architecture (PruneMergeViT or VisionTransformer backbone).

Usage: python tools/model_converters/segmenter2mmseg.py SRC DST [--img-size H W]
       [--drop-dist-token]

Prints what happened to every key; exit code 2 with one ``error: ...`` line on bad input.
"""
from mmseg_pm.converters import convert_segmenter, patch_size_of
from mmseg_pm.converters.cli import Converted, convert_main, grid_arg
from mmseg_pm.utils import run_cli


def add_arguments(parser):
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='target crop size: pos_embed is resampled to the (H/16, W/16) '
                             'grid (default: keep the training grid)')
    parser.add_argument('--drop-dist-token', action='store_true',
                        help='convert a distilled (DeiT) encoder by dropping its distillation '
                             'token (the features then differ from the official model\'s)')


def convert(args, state_dict, extras, report):
    grid = grid_arg(args.img_size, patch_size_of(state_dict, 'encoder.'))
    out = convert_segmenter(state_dict, grid, drop_dist_token=args.drop_dist_token,
                            report=report)
    return Converted(out, meta=dict(img_size=args.img_size),
                     what=' (backbone.*, decode_head.*)')


def main(argv=None) -> int:
    """Convert SRC, write DST atomically, print the summary; returns the exit code."""
    return convert_main(
        argv, converter='segmenter2mmseg', formats=('segmenter',), expected='segmenter',
        description='Convert an official Segmenter checkpoint to mmseg EncoderDecoder keys',
        src_help='official Segmenter checkpoint (checkpoint.pth)', add_arguments=add_arguments,
        convert=convert)


if __name__ == '__main__':
    run_cli(main)
