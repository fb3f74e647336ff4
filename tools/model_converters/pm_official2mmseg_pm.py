"""Convert an official Prune-and-Merge checkpoint to a compressed mmseg_pm checkpoint.

Sources: the classification ``pm-vit`` checkpoints of NUST-Machine-Intelligence-Laboratory/
prune_and_merge (``tmvit_*``: per-block ``attn.merge_matrix`` / ``attn.recover_matrix`` /
``attn.token_mask`` and ``channels``) and wafev/PM-Segmenter checkpoints (Segmenter layout with
the matrices in the merge blocks and ``merged_tokens`` / ``merge_list`` / ``recover_list``). The
matrices are kept exactly as dense units ``backbone.pm.<a>.*`` (they may have drifted during
the official finetuning); the structure (groups, centers, pruned set) is read off their support.
The output holds ``state_dict`` (``backbone.*`` [+ ``decode_head.*``]) and
``meta.pm_structure``, whose ``pm_cfg`` is the backbone's ``pm_cfg`` to build the model with
(representation 'dense', ``img_size`` = the crop of the structure).

Usage: python tools/model_converters/pm_official2mmseg_pm.py SRC DST [--img-size H W]
       [--structure-json PATH]

Prints what happened to every key; exit code 2 with one ``error: ...`` line on bad input.
"""
import json

from mmseg_pm.converters import convert_pm_official, patch_size_of, pm_structure_from_state_dict
from mmseg_pm.converters.cli import Converted, convert_main, grid_arg
from mmseg_pm.utils import run_cli


def add_arguments(parser):
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='crop size the matrices were built for (default: the square grid '
                             'of their N patch tokens)')
    parser.add_argument('--structure-json', metavar='PATH',
                        help='also write meta.pm_structure to this JSON file')


def convert(args, state_dict, extras, report):
    prefix = 'encoder.' if report.fmt == 'pm_segmenter' else ''
    out = convert_pm_official(dict(extras, model=state_dict),
                              grid_arg(args.img_size, patch_size_of(state_dict, prefix)),
                              report=report)
    structure = pm_structure_from_state_dict(out, trainable=report.fmt == 'pm_vit')
    lines = ['backbone pm_cfg for this checkpoint: ' + json.dumps(structure['pm_cfg'])]
    lines += [f'  unit {tuple(u["span"])}: grid {u["grid_size"]}, N={u["num_tokens"]}, '
              f'K={u["num_groups"]}, merged {u["num_merged"]}, pruned {u["num_pruned"]}'
              for u in structure['units']]
    return Converted(out, meta=dict(pm_structure=structure), lines=lines,
                     json_files=[(structure, args.structure_json)] if args.structure_json
                     else [])


def main(argv=None) -> int:
    """Convert SRC, write DST atomically, print the summary; returns the exit code."""
    return convert_main(
        argv, converter='pm_official2mmseg_pm', formats=('pm_vit', 'pm_segmenter'),
        expected='an official Prune-and-Merge checkpoint',
        description='Convert an official Prune-and-Merge checkpoint (pm-vit or PM-Segmenter) '
                    'to a compressed mmseg_pm checkpoint (dense units)',
        src_help='official checkpoint', add_arguments=add_arguments, convert=convert,
        outputs=('structure_json',))


if __name__ == '__main__':
    run_cli(main)
