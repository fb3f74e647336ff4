"""Official Prune-and-Merge checkpoints -> compressed mmseg_pm checkpoints (dense units).

Mao et al., "Prune and Merge: Efficient Token Compression for Vision Transformer with Spatial
Information Preserved", IEEE TMM 2025 (arXiv 2503.23455). Sources:

* classification, NUST-Machine-Intelligence-Laboratory/prune_and_merge ``pm-vit/tmvit.py``
  (models ``tmvit_*``): every block's attention module holds the merge matrix
  ``attn.merge_matrix`` M ``(K_l+1, N+1)``, ``attn.recover_matrix`` R ``(N+1, K_l+1)``, the
  token mask ``attn.token_mask`` t ``(N+1,)`` and ``attn.bias``; the checkpoint's top-level
  ``channels`` (K_l+1 per layer) builds the model. M and R are trained densely in
  ``finetune.py``.
* segmentation, wafev/PM-Segmenter (a fork of rstrudel/segmenter; ``segm/model/blocks.py``,
  ``segm/model/vit.py``): the Segmenter layout with M, R (and t) in the merge blocks, with or
  without the ``attn.`` level, and the top-level ``merged_tokens``, ``merge_list`` and
  ``recover_list``. M, R and t are frozen in its finetuning.

The matrices are kept exactly as dense :class:`~mmseg_pm.models.reducers.PruneMergeUnit` state
(``backbone.pm.<a>.*``); the structure (groups, centers, pruned set) is read off their support
(:func:`mmseg_pm.functional.prune_merge_dense.structure_from_dense`).
"""
from collections import OrderedDict
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import CheckpointFormatError, ConfigError, StructureError
from ..functional.prune_merge import PMStructure, check_spans, validate_structure
from ..functional.prune_merge_dense import structure_from_dense, support_weights
from ..models.backbones.prune_merge_vit import DEFAULT_PM_CFG, STRUCTURE_KEYS
from .formats import (FORMATS, PM_TENSOR_RE, ConversionReport, detect_format, patch_size_of,
                      split_blocks, unwrap_checkpoint)
from .segmenter import convert_segmenter
from .timm import convert_vit_encoder, describe_vit

#: why an official tensor that no unit takes is dropped
_BIAS_REASON = ('official ToMe-style attention bias log(sqrt(row sum)): computed by pm-vit\'s '
                'tm_prune_merge_to_center.get_merge_matrix but never added to the logits '
                '(the line in tmvit.py is commented out)')


class _Unit(NamedTuple):
    """One official merge block ``a`` paired with its recover block ``b``."""
    a: int
    b: int
    index: int      # position in merge_list
    key_m: str
    m: Tensor       # (K + 1, N + 1)
    key_r: str
    r: Tensor       # (N + 1, K + 1)


def _pm_block_tensors(sd: Mapping[str, Tensor]) -> Dict[int, Dict[str, Tuple[str, Tensor]]]:
    """``{block: {'merge_matrix' | 'recover_matrix' | 'token_mask' | 'bias': (key, tensor)}}``."""
    blocks: Dict[int, Dict[str, Tuple[str, Tensor]]] = {}
    for key, value in sd.items():
        match = PM_TENSOR_RE.match(key)
        if match:
            blocks.setdefault(int(match.group('blk')), {})[match.group('name')] = (key, value)
    return blocks


def _as_int_list(value, name: str) -> Optional[List[int]]:
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.tolist()
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise CheckpointFormatError(f'checkpoint entry "{name}" must be a list of ints, got '
                                    f'{value!r}') from None


def _merge_recover_lists(extras: dict, with_matrix: List[int], num_layers: int, fmt: str,
                         report: ConversionReport) -> Tuple[List[int], Optional[List[int]]]:
    """``merge_list`` (block indices, mod L) and the paired ``recover_list`` (or None)."""
    merge_list = _as_int_list(extras.get('merge_list'), 'merge_list') or None
    recover_list = _as_int_list(extras.get('recover_list'), 'recover_list') or None
    if merge_list is None:
        if 'merge_list' in extras:
            report.note('merge_list is empty (PM-Segmenter\'s older segm/prune_finetune.py '
                        'saves it so): using every block that holds a merge matrix')
        merge_list = with_matrix
    merge_list = [i % num_layers for i in merge_list]
    missing = [i for i in merge_list if i not in with_matrix]
    if missing:
        raise CheckpointFormatError(f'merge_list names blocks {missing} that hold no merge '
                                    f'matrix (blocks with one: {with_matrix})')
    if recover_list is not None and fmt == 'pm_vit':
        report.note('recover_list ignored: the classification code merges and recovers in the '
                    'same block (pm-vit\'s config.py parses recover_list, tmvit.py never reads '
                    'it)')
        recover_list = None
    if recover_list is not None and len(recover_list) != len(merge_list):
        raise CheckpointFormatError(f'merge_list {merge_list} and recover_list {recover_list} '
                                    f'differ in length')
    return merge_list, recover_list


def _pair_units(blocks: dict, merge_list: List[int], recover_list: Optional[List[int]],
                num_layers: int, report: ConversionReport) -> List[_Unit]:
    """Pair every merge block with its recover block; units sorted, spans not overlapping."""
    units = []
    for idx, a in enumerate(merge_list):
        key_m, m = blocks[a]['merge_matrix']
        if m.dim() != 2:
            raise StructureError(f'{key_m} must be 2-D (K + 1, N + 1), got {tuple(m.shape)}')
        key_r, r = blocks[a].get('recover_matrix', (None, None))
        b = recover_list[idx] % num_layers if recover_list else a
        if b != a:
            cand = blocks.get(b, {}).get('recover_matrix')
            if cand is not None and tuple(cand[1].shape) == tuple(m.shape)[::-1]:
                key_r, r = cand
            else:
                report.note(f'recover_list pairs block {a} with block {b}, but block {b} holds no '
                            f'recover matrix of shape {tuple(m.shape)[::-1]}: as in the '
                            f'published PM-Segmenter code, block {a} merges and recovers within '
                            f'itself (unit ({a}, {a}))')
                b = a
        if b < a:
            raise CheckpointFormatError(f'recover block {b} comes before merge block {a}')
        if r is None:
            raise StructureError(f'block {a}: no recover matrix (looked in blocks {a} and {b})')
        units.append(_Unit(a, b, idx, key_m, m, key_r, r))
    units.sort(key=lambda u: u.a)
    try:
        check_spans([(u.a, u.b) for u in units], num_layers)
    except ConfigError as e:  # a checkpoint, not a config, is at fault
        raise CheckpointFormatError(str(e)) from None
    return units


def _unit_state(unit: _Unit, key_t: Optional[str], t: Optional[Tensor],
                grid_size: Optional[Sequence[int]], report: ConversionReport
                ) -> Tuple[Dict[str, Tensor], PMStructure, List[str]]:
    """The dense ``backbone.pm.<a>.*`` tensors of one unit (token mask ``t`` ``(N + 1,)`` or
    None: all ones), its structure and the source keys it consumed."""
    a, b = unit.a, unit.b
    where = f'block {a}' if a == b else f'span ({a}, {b})'
    s, m, r, notes = structure_from_dense(unit.m, unit.r, t, grid_size=grid_size,
                                          num_prefix=1, where=where)
    for msg in notes:
        report.note(msg)
    dst = f'backbone.pm.{a}.'
    out = OrderedDict([
        (dst + 'span', torch.tensor([a, b])),
        (dst + 'grid_size', torch.tensor(list(s.grid_size))),
        (dst + 'assign', s.assign),
        (dst + 'centers', s.centers),
        (dst + 'merge_matrix', m),
        (dst + 'restore_matrix', r),
        (dst + 'token_mask', t.detach().flatten().clone() if t is not None else
         torch.ones(int(unit.m.shape[1]), dtype=unit.m.dtype)),
    ])
    report.converted[unit.key_m] = ('-> backbone.pm.<a>.merge_matrix (dense, values kept); '
                                    'assign / centers read off its support')
    report.converted[unit.key_r] = '-> backbone.pm.<a>.restore_matrix (dense, values kept)'
    if key_t is not None:
        report.converted[key_t] = '-> backbone.pm.<a>.token_mask (flattened)'
    return out, s, [k for k in (unit.key_m, unit.key_r, key_t) if k]


def convert_pm_official(checkpoint: Mapping, grid_size: Optional[Sequence[int]] = None, *,
                        report: Optional[ConversionReport] = None,
                        decoder: bool = True) -> Dict[str, Tensor]:
    """Official Prune-and-Merge checkpoint -> compressed mmseg_pm state dict (dense units).

    Sources (module docstring): the classification ``pm-vit`` (``tmvit_*``; every block holds
    ``attn.merge_matrix`` M ``(K_l+1, N+1)``, ``attn.recover_matrix`` R ``(N+1, K_l+1)``,
    ``attn.token_mask`` t ``(N+1,)`` and the unused ``attn.bias``; top-level ``channels`` =
    K_l+1 per layer) and PM-Segmenter (Segmenter layout; the matrices in the merge blocks,
    with or without the ``attn.`` level; top-level ``merged_tokens``, ``merge_list``,
    ``recover_list``).

    Each merge block ``a`` (``merge_list``, else every block holding a merge matrix) becomes a
    dense unit ``backbone.pm.<a>.*`` of :class:`~mmseg_pm.models.reducers.PruneMergeUnit`:
    ``span`` = (a, b) with b the paired ``recover_list`` entry (else a), ``grid_size``,
    ``assign`` ``(N,)``, ``centers`` ``(K,)`` (read off the support, see
    :func:`~mmseg_pm.functional.prune_merge_dense.structure_from_dense`), ``merge_matrix`` =
    M, ``restore_matrix`` = R (from block b if it holds one of the right shape, else from
    block a), ``token_mask`` = t (all ones if absent: span mode builds none). The values of
    M, R and t are kept exactly. The encoder becomes ``backbone.*``
    (:func:`~mmseg_pm.converters.timm.convert_timm_vit`) and a Segmenter decoder
    ``decode_head.*`` (:func:`~mmseg_pm.converters.segmenter.convert_segmenter`);
    ``pos_embed`` is resampled to the structure's grid if it differs.
    :func:`pm_structure_from_state_dict` gives the matching ``pm_cfg`` and structure record.

    Args:
        checkpoint (Mapping): the loaded official file (``{'model': state_dict, 'channels' |
            'merged_tokens', 'merge_list', 'recover_list', ...}``); a bare state dict works
            too (lists then come from the matrices).
        grid_size (tuple[int, int], optional): patch grid of the crop the matrices are built
            for; square ``sqrt(N)`` if None.
        report (ConversionReport, optional): filled with what happened to every key.
        decoder (bool): convert a PM-Segmenter decoder too (else drop it, recorded in
            ``report``). Default: True.

    Returns:
        dict: ``backbone.*`` (with ``backbone.pm.<a>.*``) and, for PM-Segmenter,
        ``decode_head.*``.

    Raises:
        CheckpointFormatError: not an official PM layout, inconsistent or overlapping
            merge / recover lists, a distilled encoder (the official M / R builder,
            ``get_merge_matrix``, handles one class token only).
        StructureError: matrices of inconsistent shapes, a K that disagrees with
            ``channels`` / ``merged_tokens``, units on different grids, or a drifted structure
            that cannot be read.
    """
    sd, extras = unwrap_checkpoint(checkpoint)
    fmt = detect_format(sd)
    if fmt not in ('pm_vit', 'pm_segmenter'):
        raise CheckpointFormatError(
            f'not an official Prune-and-Merge checkpoint (detected format "{fmt}": '
            f'{FORMATS[fmt]}); expected blocks.<i>.attn.merge_matrix / recover_matrix')
    report = report if report is not None else ConversionReport()
    report.fmt = fmt
    enc_prefix = 'encoder.' if fmt == 'pm_segmenter' else ''
    if enc_prefix + 'dist_token' in sd:
        raise CheckpointFormatError(
            f'{enc_prefix}dist_token: distilled Prune-and-Merge checkpoints are not supported '
            f'(the official M / R builder, get_merge_matrix, handles one class token only)')
    num_layers = len(split_blocks(sd, enc_prefix + 'blocks.')[0])
    blocks = _pm_block_tensors(sd)
    tokens_name = 'channels' if 'channels' in extras else 'merged_tokens'
    tokens = _as_int_list(extras.get(tokens_name), tokens_name)
    with_matrix = sorted(i for i, t in blocks.items() if 'merge_matrix' in t)
    merge_list, recover_list = _merge_recover_lists(extras, with_matrix, num_layers, fmt, report)
    units = _pair_units(blocks, merge_list, recover_list, num_layers, report)
    spans = [(u.a, u.b) for u in units]

    out: Dict[str, Tensor] = OrderedDict()
    used, grid = set(), None
    for unit in units:
        where = f'block {unit.a}' if unit.a == unit.b else f'span ({unit.a}, {unit.b})'
        k1 = int(unit.m.shape[0])
        key_t, t = blocks[unit.a].get('token_mask', (None, None))
        if t is None:
            report.note(f'{where}: no token mask (span mode builds none): all ones, nothing '
                        f'pruned')
        if tokens is not None:
            expected = (tokens[unit.a] if len(tokens) == num_layers else
                        tokens[unit.index] if len(tokens) == len(units) else None)
            if expected is None:
                report.note(f'{tokens_name} has {len(tokens)} entries for {num_layers} layers / '
                            f'{len(units)} units: not checked')
            elif expected != k1:
                raise StructureError(f'{where}: {tokens_name}[{unit.a}] = {expected} but the '
                                     f'merge matrix has {k1} rows (K + 1)')
        state, s, consumed = _unit_state(unit, key_t, t, grid_size, report)
        if grid is not None and grid != s.grid_size:
            raise StructureError(f'{where}: grid {s.grid_size} differs from the other units\' '
                                 f'{grid}')
        grid = s.grid_size
        out.update(state)
        used.update(consumed)
    for i, tensors in blocks.items():
        for name, (key, _) in tensors.items():
            if key in used:
                continue
            if name == 'bias':
                why = _BIAS_REASON
            elif any(a <= i <= b for a, b in spans):
                why = ('superseded: the unit of this span takes M from its first block and R '
                       'from its last')
            else:
                why = 'block not in merge_list: the official model does not apply it'
            report.dropped[key] = why
    rest = OrderedDict((k, v) for k, v in sd.items() if not PM_TENSOR_RE.match(k))
    if fmt == 'pm_vit':
        report.note(f'source encoder: {describe_vit(rest)}')
        out.update(convert_vit_encoder(rest, dst='backbone.', report=report, grid_size=grid,
                                       drop_dist_token=False))
        trainable = 'both trained in the official classification finetuning'
    else:
        out.update(convert_segmenter(rest, grid, report=report, decoder=decoder))
        trainable = 'frozen (requires_grad=False) in the published PM-Segmenter finetuning'
    patch = patch_size_of(sd, enc_prefix)
    report.note(f'{len(spans)} Prune-and-Merge units {spans} on a {grid[0]}x{grid[1]} grid '
                f'(crop {grid[0] * patch}x{grid[1] * patch}: the backbone img_size), dense '
                f'representation; M and R are {trainable}')
    return out


def pm_structure_from_state_dict(state_dict: Mapping[str, Tensor], *,
                                 prefix: str = 'backbone.', trainable: bool = True,
                                 num_prefix: int = 1) -> dict:
    """The ``pm_cfg`` and structure record of the dense units in a converted state dict.

    Same layout as :meth:`PruneMergeViT.structure_summary`: ``pm_cfg`` (the backbone's
    ``STRUCTURE_KEYS``: ``mode``, ``layers``, ``spans``, ``representation='dense'``,
    ``trainable``, ``restore_outputs=True``; pass it as the backbone's ``pm_cfg``),
    ``with_cls_token`` and ``units`` (span, representation, grid, N, K, merged and pruned
    counts, centers, assign).

    Args:
        state_dict (Mapping): with ``<prefix>pm.<a>.{span (2,), grid_size (2,), assign (N,),
            centers (K,), merge_matrix (P+K, P+N), restore_matrix (P+N, P+K), token_mask}``
            (what :func:`convert_pm_official` writes).
        prefix (str): prefix of the backbone keys. Default: ``'backbone.'``.
        trainable (bool): ``pm_cfg.trainable``. Default: True.
        num_prefix (int): P, prefix tokens in M and R. Default: 1.

    Returns:
        dict: ``pm_cfg``, ``with_cls_token``, ``units``.

    Raises:
        StructureError: no units, or an inconsistent unit.
    """
    starts = sorted({int(k[len(prefix + 'pm.'):].split('.', 1)[0]) for k in state_dict
                     if k.startswith(prefix + 'pm.')})
    if not starts:
        raise StructureError(f'no Prune-and-Merge units ({prefix}pm.<a>.*) in the state dict')
    units, spans = [], []
    for a in starts:
        u = f'{prefix}pm.{a}.'
        assign, centers = state_dict[u + 'assign'], state_dict[u + 'centers']
        mw, rw = support_weights(state_dict[u + 'merge_matrix'], state_dict[u + 'restore_matrix'],
                                 assign, num_prefix)
        s = PMStructure(tuple(state_dict[u + 'grid_size'].tolist()), assign, centers, mw, rw)
        validate_structure(s, where=f'unit {u}')
        span = [int(v) for v in state_dict[u + 'span'].tolist()]
        spans.append(tuple(span))
        units.append(dict(span=span, representation='dense', **s.summary()))
    layer_mode = all(a == b for a, b in spans)
    cfg = dict(DEFAULT_PM_CFG, mode='layer' if layer_mode else 'span',
               layers=[a for a, _ in spans] if layer_mode else None, spans=spans,
               representation='dense', trainable=trainable, restore_outputs=True)
    return dict(pm_cfg={k: cfg[k] for k in STRUCTURE_KEYS}, with_cls_token=True, units=units)


__all__ = ['convert_pm_official', 'pm_structure_from_state_dict']
