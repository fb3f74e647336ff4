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
import argparse
import os.path as osp

from mmseg_pm.converters.checkpoint import (CheckpointFormatError, ConversionReport,
                                              convert_segmenter, detect_format,
                                              grid_from_img_size, read_checkpoint,
                                              wrong_format_message)
from mmseg_pm.errors import UserError
from mmseg_pm.utils import run_cli, save_checkpoint
from mmseg_pm.utils.preflight import check_checkpoint


def parse_args(argv=None):
    """Command line (``argv`` None: ``sys.argv``)."""
    parser = argparse.ArgumentParser(
        description='Convert an official Segmenter checkpoint to mmseg EncoderDecoder keys')
    parser.add_argument('src', help='official Segmenter checkpoint (checkpoint.pth)')
    parser.add_argument('dst', help='output file (written atomically)')
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='target crop size: pos_embed is resampled to the (H/16, W/16) '
                             'grid (default: keep the training grid)')
    parser.add_argument('--drop-dist-token', action='store_true',
                        help='convert a distilled (DeiT) encoder by dropping its distillation '
                             'token (the features then differ from the official model\'s)')
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
        if fmt != 'segmenter':
            raise UserError(wrong_format_message(args.src, fmt, 'segmenter'))
        weight = state_dict.get('encoder.patch_embed.proj.weight')
        patch = int(weight.shape[-1]) if weight is not None else 16
        report = ConversionReport(fmt)
        out = convert_segmenter(state_dict, grid_from_img_size(args.img_size, patch),
                                args.drop_dist_token, report)
    except (CheckpointFormatError, ValueError) as e:
        raise UserError(str(e)) from None
    meta = dict(converter='segmenter2mmseg', source=osp.abspath(args.src), source_format=fmt,
                img_size=args.img_size, notes=report.notes)
    path = save_checkpoint(dict(state_dict=out, meta=meta), args.dst)
    print(report.summary())
    print(f'saved {len(out)} tensors (backbone.*, decode_head.*) to {path}')
    return 0


if __name__ == '__main__':
    run_cli(main)
