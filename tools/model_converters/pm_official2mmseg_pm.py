"""Convert an official Prune-and-Merge checkpoint to a compressed mmseg_pm checkpoint.

Sources (method.md §6, §7): the classification ``pm-vit`` checkpoints (``tmvit_*``: per-block
``attn.merge_matrix`` / ``attn.recover_matrix`` / ``attn.token_mask`` and ``channels``) and
PM-Segmenter checkpoints (Segmenter layout with the matrices in the merge blocks and
``merged_tokens`` / ``merge_list`` / ``recover_list``). The matrices are kept exactly as dense
units ``backbone.pm.<a>.*`` (they may have drifted during the official finetuning); the
structure (groups, centers, pruned set) is read off their support. The output holds
``state_dict`` (``backbone.*`` [+ ``decode_head.*``]) and ``meta.pm_structure``, whose
``pm_cfg`` is the backbone's ``pm_cfg`` to build the model with (representation 'dense',
``img_size`` = the crop of the structure).

Usage: python tools/model_converters/pm_official2mmseg_pm.py SRC DST [--img-size H W]
       [--structure-json PATH]

Prints what happened to every key; exit code 2 with one ``error: ...`` line on bad input.
"""
import argparse
import json
import os.path as osp

from mmseg_pm.converters.checkpoint import (CheckpointFormatError, ConversionReport,
                                              convert_pm_official, detect_format,
                                              grid_from_img_size, pm_structure_from_state_dict,
                                              read_checkpoint, wrong_format_message)
from mmseg_pm.errors import UserError
from mmseg_pm.utils import run_cli, save_checkpoint, save_json
from mmseg_pm.utils.preflight import check_checkpoint


def parse_args(argv=None):
    """Command line (``argv`` None: ``sys.argv``)."""
    parser = argparse.ArgumentParser(
        description='Convert an official Prune-and-Merge checkpoint (pm-vit or PM-Segmenter) '
                    'to a compressed mmseg_pm checkpoint (dense units)')
    parser.add_argument('src', help='official checkpoint')
    parser.add_argument('dst', help='output file (written atomically)')
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='crop size the matrices were built for (default: the square grid '
                             'of their N patch tokens)')
    parser.add_argument('--structure-json', metavar='PATH',
                        help='also write meta.pm_structure to this JSON file')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Convert SRC, write DST atomically, print the summary; returns the exit code.

    Raises:
        UserError: bad input (missing file, another format, unsupported keys).
    """
    args = parse_args(argv)
    check_checkpoint(args.src, 'source checkpoint')
    try:
        state_dict, extras = read_checkpoint(args.src)
        fmt = detect_format(state_dict)
        if fmt not in ('pm_vit', 'pm_segmenter'):
            raise UserError(wrong_format_message(args.src, fmt, 'an official Prune-and-Merge '
                                                 'checkpoint'))
        prefix = 'encoder.' if fmt == 'pm_segmenter' else ''
        weight = state_dict.get(prefix + 'patch_embed.proj.weight')
        patch = int(weight.shape[-1]) if weight is not None else 16
        report = ConversionReport(fmt)
        out = convert_pm_official(dict(extras, model=state_dict),
                                  grid_from_img_size(args.img_size, patch), report)
        structure = pm_structure_from_state_dict(out, trainable=fmt == 'pm_vit')
    except (CheckpointFormatError, ValueError) as e:
        raise UserError(str(e)) from None
    meta = dict(converter='pm_official2mmseg_pm', source=osp.abspath(args.src),
                source_format=fmt, pm_structure=structure, notes=report.notes)
    path = save_checkpoint(dict(state_dict=out, meta=meta), args.dst)
    if args.structure_json:
        save_json(structure, args.structure_json)
    print(report.summary())
    print('backbone pm_cfg for this checkpoint: '
          + json.dumps(structure['pm_cfg']))
    for unit in structure['units']:
        print(f'  unit {tuple(unit["span"])}: grid {unit["grid_size"]}, N={unit["num_tokens"]}, '
              f'K={unit["num_groups"]}, merged {unit["num_merged"]}, pruned '
              f'{unit["num_pruned"]}')
    print(f'saved {len(out)} tensors to {path}')
    return 0


if __name__ == '__main__':
    run_cli(main)
