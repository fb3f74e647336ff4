"""The shared command line of ``tools/model_converters/*.py``: check the paths, read and
recognise SRC, convert it, write DST atomically and print what happened to every key.

Every tool is a thin shim: its own arguments and a ``convert`` callback (mmseg's
``tools/model_converters/vit2mmseg.py`` pattern, one script per source format).
"""
import argparse
import os
import os.path as osp
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

from ..errors import UserError
from ..utils.io import save_checkpoint, save_json
from ..utils.preflight import check_checkpoint
from .formats import ConversionReport, detect_format, read_checkpoint, wrong_format_message

#: the tool that converts each source format (named in wrong-format errors)
CONVERTER_TOOLS = dict(timm='tools/model_converters/timm2mmseg.py',
                       segmenter='tools/model_converters/segmenter2mmseg.py',
                       pm_vit='tools/model_converters/pm_official2mmseg_pm.py',
                       pm_segmenter='tools/model_converters/pm_official2mmseg_pm.py')


@dataclass
class Converted:
    """What a tool's ``convert`` callback returns.

    Attributes:
        state_dict (dict): the converted tensors, saved as ``state_dict``.
        meta (dict): entries of the output's ``meta`` besides ``converter``, ``source``,
            ``source_format`` and ``notes``.
        lines (list[str]): printed after the report.
        what (str): how the final line names the tensors, e.g. ``' (backbone.*)'``.
        json_files (list[tuple]): ``(object, path)`` pairs written as JSON after DST.
    """
    state_dict: Dict[str, Tensor]
    meta: dict = field(default_factory=dict)
    lines: List[str] = field(default_factory=list)
    what: str = ''
    json_files: List[Tuple[object, str]] = field(default_factory=list)


def grid_arg(img_size: Optional[Sequence[int]], patch_size: int,
             flag: str = '--img-size') -> Optional[Tuple[int, int]]:
    """Patch grid ``(H // P, W // P)`` of an ``--img-size H W`` (None stays None), as mmseg's
    ``VisionTransformer`` computes it from ``img_size``.

    Raises:
        UserError: a side smaller than one patch.
    """
    if img_size is None:
        return None
    h, w = (int(v) for v in img_size)
    if h < patch_size or w < patch_size:
        raise UserError(f'{flag}: image size {h}x{w} is smaller than one {patch_size}px patch')
    return h // patch_size, w // patch_size


def check_output_path(path: str, src: str, what: str = 'DST') -> None:
    """Refuse an output that would overwrite the source or cannot be written, before any work.

    Args:
        path (str): the output file (its folders are created when missing).
        src (str): the source checkpoint.
        what (str): how the message names the output.

    Raises:
        UserError: ``path`` is ``src`` (after resolving links), an existing folder, or its
            nearest existing folder is not a writable directory.
    """
    dst = osp.abspath(path)
    if osp.realpath(dst) == osp.realpath(src) or (
            osp.exists(dst) and osp.exists(src) and osp.samefile(dst, src)):
        raise UserError(f'{what} {path} is the source checkpoint {src}: writing it would '
                        f'overwrite the source; give another output path')
    if osp.isdir(dst):
        raise UserError(f'{what} {path} is a directory; give an output file path')
    parent = osp.dirname(dst)
    while not osp.exists(parent):
        parent = osp.dirname(parent)
    reason = None
    if not osp.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        reason = 'not a writable directory'
    else:
        try:  # what the mode bits do not say (read-only or special file systems, root)
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as e:
            reason = f'not a writable directory ({e.strerror or type(e).__name__})'
    if reason:
        raise UserError(f'cannot write {what} {path}: {parent} is {reason}')


def convert_main(argv: Optional[Sequence[str]], *, converter: str, description: str,
                 src_help: str, formats: Sequence[str], expected: str,
                 add_arguments: Callable[[argparse.ArgumentParser], None],
                 convert: Callable[[argparse.Namespace, Dict[str, Tensor], dict,
                                    ConversionReport], Converted],
                 outputs: Sequence[str] = ()) -> int:
    """The ``main`` of a converter tool: ``SRC DST`` plus the tool's arguments.

    Order: parse; refuse ``DST`` (and the ``outputs`` arguments) equal to ``SRC`` or not
    writable; check ``SRC`` (missing, URL, truncated); read and detect its format (refusing
    other formats with the tool that converts them); ``convert``; write ``DST`` atomically
    (``{'state_dict': ..., 'meta': {converter, source, source_format, ..., notes}}``) and the
    JSON files; print the report and ``saved N tensors ... to DST``.

    Args:
        argv (Sequence[str], optional): command line (None: ``sys.argv``).
        converter (str): the tool's name, stored in ``meta.converter``.
        description (str): ``--help`` text.
        src_help (str): ``--help`` text of SRC.
        formats (Sequence[str]): accepted source formats (keys of ``FORMATS``).
        expected (str): how wrong-format errors name what was expected.
        add_arguments (callable): adds the tool's own options to the parser.
        convert (callable): ``(args, state_dict, extras, report) -> Converted``.
        outputs (Sequence[str]): destinations of further output files among the options
            (``'structure_json'``), checked as DST is.

    Returns:
        int: exit code 0 (errors raise).

    Raises:
        UserError: bad paths or another format (``run_cli`` prints one line, exit code 2).
        mmseg_pm.errors.MMSegPMError: from reading or converting (one line too).
        FileNotFoundError: SRC vanished between the check and the read.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('src', help=src_help)
    parser.add_argument('dst', help='output file (written atomically)')
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_output_path(args.dst, args.src)
    for name in outputs:
        if getattr(args, name, None):
            check_output_path(getattr(args, name), args.src, '--' + name.replace('_', '-'))
    check_checkpoint(args.src, 'source checkpoint')
    state_dict, extras = read_checkpoint(args.src)
    fmt = detect_format(state_dict)
    if fmt not in formats:
        raise UserError(wrong_format_message(args.src, fmt, expected, CONVERTER_TOOLS.get(fmt)))
    report = ConversionReport(fmt)
    result = convert(args, state_dict, extras, report)
    meta = dict(converter=converter, source=osp.abspath(args.src), source_format=fmt,
                **result.meta, notes=report.notes)
    path = save_checkpoint(dict(state_dict=result.state_dict, meta=meta), args.dst)
    for obj, json_path in result.json_files:
        save_json(obj, json_path)
    print(report.summary())
    for line in result.lines:
        print(line)
    print(f'saved {len(result.state_dict)} tensors{result.what} to {path}')
    return 0


__all__ = ['CONVERTER_TOOLS', 'Converted', 'grid_arg', 'check_output_path', 'convert_main']
