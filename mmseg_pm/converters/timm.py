"""timm ViT / DeiT / AugReg / MAE classification checkpoints -> mmseg ``VisionTransformer`` keys.

Source: timm ``models/vision_transformer.py`` (``VisionTransformer``, ``Block``, LayerScale,
``checkpoint_filter_fn``). Target: mmseg ``models/backbones/vit.py`` (``patch_embed.projection.*``,
``cls_token``, ``pos_embed`` ``(1, 1 + H_g * W_g, C)``, ``layers.<i>.{ln1, attn.attn.in_proj_weight,
attn.attn.in_proj_bias, attn.attn.out_proj, ln2, ffn.layers.0.0, ffn.layers.1}.*``, ``ln1.*``
(final norm), ``ln_pre.*`` (pre-norm)). The encoder part (:func:`convert_vit_encoder`,
:func:`convert_block`) is shared with the Segmenter and official Prune-and-Merge converters.
Position embeddings and patch kernels are resampled with ``timm.layers.resample_abs_pos_embed``
/ ``resample_patch_embed`` (bicubic, antialiased: what ``checkpoint_filter_fn`` uses).
"""
import math
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import Tensor

from ..errors import CheckpointFormatError
from .formats import ConversionReport, patch_size_of, split_blocks

#: one encoder block, timm / Segmenter name -> mmseg ``TransformerEncoderLayer`` name
BLOCK_KEYS = {
    'norm1.weight': 'ln1.weight',
    'norm1.bias': 'ln1.bias',
    'attn.qkv.weight': 'attn.attn.in_proj_weight',
    'attn.qkv.bias': 'attn.attn.in_proj_bias',
    'attn.proj.weight': 'attn.attn.out_proj.weight',
    'attn.proj.bias': 'attn.attn.out_proj.bias',
    'norm2.weight': 'ln2.weight',
    'norm2.bias': 'ln2.bias',
    'mlp.fc1.weight': 'ffn.layers.0.0.weight',
    'mlp.fc1.bias': 'ffn.layers.0.0.bias',
    'mlp.fc2.weight': 'ffn.layers.1.weight',
    'mlp.fc2.bias': 'ffn.layers.1.bias',
}
#: timm LayerScale parameters and the linear layer each one is folded into
LAYER_SCALE = {'ls1.gamma': 'attn.proj', 'gamma_1': 'attn.proj',
               'ls2.gamma': 'mlp.fc2', 'gamma_2': 'mlp.fc2'}
#: encoder top-level keys, timm name -> mmseg ``VisionTransformer`` name
TOP_KEYS = {
    'cls_token': 'cls_token',
    'pos_embed': 'pos_embed',
    'patch_embed.proj.weight': 'patch_embed.projection.weight',
    'patch_embed.proj.bias': 'patch_embed.projection.bias',
    'norm.weight': 'ln1.weight',
    'norm.bias': 'ln1.bias',
    'norm_pre.weight': 'ln_pre.weight',
    'norm_pre.bias': 'ln_pre.bias',
}
#: encoder keys that are not part of a backbone: prefix -> why they are dropped
DROPPABLE_PREFIXES = OrderedDict([
    ('head_dist.', 'distillation head of a distilled DeiT, not part of the backbone'),
    ('head.', 'classification head, not part of the backbone'),
    ('pre_logits.', 'pre-logits layer of the classification head, not part of the backbone'),
    ('attn_pool.', 'attention-pooling classification head, not part of the backbone'),
    ('fc_norm.', 'norm of the pooled classification feature (global-pool head), not applied '
                 'to the patch tokens'),
    ('mask_token', 'MAE pretraining decoder, not part of the encoder'),
    ('decoder_', 'MAE pretraining decoder, not part of the encoder'),
])


def source_grid(pos_len: int, num_prefix: int,
                src_grid: Optional[Sequence[int]] = None) -> Tuple[Tuple[int, int], int]:
    """Patch grid and prefix rows of a source ``pos_embed`` with ``pos_len`` rows.

    Args:
        pos_len (int): rows of ``pos_embed`` ``(1, pos_len, C)``.
        num_prefix (int): prefix tokens expected first (1: CLS; 2: CLS + DeiT distillation).
        src_grid (tuple[int, int], optional): the grid, when known (non-square sources).

    Returns:
        tuple: ``((H_g, W_g), prefix rows)``; without ``src_grid`` the square grid left by
        ``num_prefix``, 0, 1 or 2 prefix rows (at most one of them is a square).

    Raises:
        CheckpointFormatError: no square grid fits and ``src_grid`` is not given.
    """
    if src_grid is not None:
        gh, gw = (int(v) for v in src_grid)
        return (gh, gw), pos_len - gh * gw
    for p in (num_prefix, 0, 1, 2):  # consecutive squares differ by >= 3
        side = math.isqrt(pos_len - p) if pos_len - p > 0 else 0
        if side and side * side == pos_len - p:
            return (side, side), p
    raise CheckpointFormatError(
        f'cannot infer the patch grid of a pos_embed with {pos_len} rows (not a square grid '
        f'plus {num_prefix} prefix tokens); give the source grid (--src-img-size)')


def resample_pos_embed(pos_embed: Tensor, new_grid: Sequence[int],
                       old_grid: Optional[Sequence[int]] = None, num_prefix: int = 1,
                       interpolation: str = 'bicubic') -> Tensor:
    """Resample an absolute position embedding to another patch grid with timm's
    ``resample_abs_pos_embed`` (antialiased; prefix rows are kept unchanged).

    Args:
        pos_embed (Tensor): ``(1, P + H_old * W_old, C)``.
        new_grid (tuple[int, int]): ``(H_new, W_new)``.
        old_grid (tuple[int, int], optional): ``(H_old, W_old)``; square if None.
        num_prefix (int): P. Default: 1 (the class token).
        interpolation (str): ``F.interpolate`` mode. Default: ``'bicubic'``.

    Returns:
        Tensor: ``(1, P + H_new * W_new, C)``, same dtype.
    """
    return resample_abs_pos_embed(pos_embed, new_size=[int(v) for v in new_grid],
                                  old_size=None if old_grid is None else
                                  [int(v) for v in old_grid],
                                  num_prefix_tokens=num_prefix, interpolation=interpolation)


def _resample_geometry(sd: Dict[str, Tensor], src_grid: Tuple[int, int],
                       grid: Optional[Sequence[int]], patch_size: Optional[int],
                       report: ConversionReport, src: str) -> None:
    """Resample ``pos_embed`` (1 prefix row) to ``grid`` and the 4-D patch kernel to
    ``patch_size`` in place, as timm's ``checkpoint_filter_fn`` does for a model of that
    geometry."""
    weight = sd.get('patch_embed.proj.weight')
    src_patch = patch_size_of(sd)
    patch = int(patch_size or src_patch)
    grid = tuple(int(v) for v in (grid or src_grid))
    if tuple(src_grid) != grid:
        sd['pos_embed'] = resample_pos_embed(sd['pos_embed'], grid, old_grid=src_grid)
        report.converted[src + 'pos_embed'] = (
            f'resampled {src_grid[0]}x{src_grid[1]} -> {grid[0]}x{grid[1]} patch grid (timm '
            f'resample_abs_pos_embed, bicubic)')
    if weight is not None and weight.dim() == 4 and patch != src_patch:
        sd['patch_embed.proj.weight'] = resample_patch_embed(weight, [patch, patch])
        report.converted[src + 'patch_embed.proj.weight'] = (
            f'patch kernel resampled {src_patch} -> {patch} (timm resample_patch_embed)')


def convert_block(block: Mapping[str, Tensor], *, src: str, dst: str,
                  report: ConversionReport, out: Dict[str, Tensor]) -> List[str]:
    """One timm / Segmenter ``Block`` -> mmseg ``TransformerEncoderLayer`` keys, into ``out``.

    ``attn.qkv`` ``(3C, C)`` (q, k, v order, as ``nn.MultiheadAttention``) becomes
    ``attn.attn.in_proj_*``; LayerScale ``gamma`` ``(C,)`` is folded into the preceding linear
    layer (exact: ``gamma * (W x + b) = (gamma W) x + gamma b``); BEiT-style ``q_bias`` /
    ``v_bias`` ``(C,)`` become ``in_proj_bias = [q_bias, 0, v_bias]`` ``(3C,)``.

    Args:
        block (Mapping): the block's tensors, keys relative to the block (``norm1.weight``).
        src (str): source prefix of the block, for the report (``'blocks.3.'``).
        dst (str): target prefix (``'layers.3.'``).
        report (ConversionReport): filled with what happened to every key.
        out (dict): receives the target tensors.

    Returns:
        list[str]: source keys it does not recognise (the caller raises).
    """
    block = dict(block)
    unknown = []
    for ls_key, linear in LAYER_SCALE.items():
        if ls_key not in block:
            continue
        gamma = block.pop(ls_key)
        for suffix in ('weight', 'bias'):
            key = f'{linear}.{suffix}'
            if key in block:
                value = block.pop(key)
                scaled = gamma[:, None] * value if suffix == 'weight' else gamma * value
                out[dst + BLOCK_KEYS[key]] = scaled
                report.converted[src + key] = f'LayerScale {ls_key} folded in'
        report.converted[src + ls_key] = f'folded into {linear} (mmseg has no LayerScale)'
    if 'attn.q_bias' in block and 'attn.v_bias' in block and 'attn.qkv.bias' not in block:
        q, v = block.pop('attn.q_bias'), block.pop('attn.v_bias')
        out[dst + 'attn.attn.in_proj_bias'] = torch.cat([q, torch.zeros_like(q), v])
        report.converted[src + 'attn.q_bias'] = 'in_proj_bias = [q_bias, 0, v_bias]'
        report.converted[src + 'attn.v_bias'] = 'in_proj_bias = [q_bias, 0, v_bias]'
    for key, value in block.items():
        if key in BLOCK_KEYS:
            out[dst + BLOCK_KEYS[key]] = value
            report.renamed[src + key] = dst + BLOCK_KEYS[key]
        else:
            unknown.append(src + key)
    return unknown


def convert_blocks(blocks: Mapping[int, Mapping[str, Tensor]], *, src: str, dst: str,
                   report: ConversionReport, out: Dict[str, Tensor]) -> List[str]:
    """:func:`convert_block` for every block: source ``<src>blocks.<i>.`` -> target
    ``<dst>layers.<i>.``. Returns the source keys no block recognises (the caller raises)."""
    unknown = []
    for i, block in blocks.items():
        unknown += convert_block(block, src=f'{src}blocks.{i}.', dst=f'{dst}layers.{i}.',
                                 report=report, out=out)
    return unknown


def _drop_and_check(sd: Dict[str, Tensor], src: str, report: ConversionReport) -> None:
    """Drop the heads / MAE decoder (recorded) and refuse what mmseg's ViT cannot hold."""
    for key in list(sd):
        for prefix, why in DROPPABLE_PREFIXES.items():
            if key.startswith(prefix) or key == prefix.rstrip('.'):
                del sd[key]
                report.dropped[src + key] = why
                break
    if any(k[len(src):].startswith(('decoder_', 'mask_token')) for k in report.dropped
           if k.startswith(src)):
        report.note('MAE pretraining decoder (decoder_*, mask_token) dropped: only the encoder '
                    'is converted')
    if 'reg_token' in sd:
        raise CheckpointFormatError(
            f'{src}reg_token: register tokens are not supported by mmseg\'s VisionTransformer '
            f'(one class token only)')
    if 'cls_token' not in sd or 'pos_embed' not in sd:
        raise CheckpointFormatError(
            f'{src}cls_token / {src}pos_embed missing: mmseg\'s VisionTransformer needs a class '
            f'token and an absolute position embedding (found keys {list(sd)[:8]})')


def _class_token_pos_embed(sd: Dict[str, Tensor], src: str, report: ConversionReport, *,
                           src_grid, drop_dist_token: bool, dist_hint: str) -> Tuple[int, int]:
    """Leave ``sd['pos_embed']`` with exactly one prefix row (the class token's); returns the
    source grid."""
    has_dist = 'dist_token' in sd
    (gh, gw), pos_prefix = source_grid(int(sd['pos_embed'].shape[1]), 1 + has_dist, src_grid)
    pos = sd['pos_embed']
    if has_dist:
        if not drop_dist_token:
            raise CheckpointFormatError(
                f'{src}dist_token: a distilled (DeiT) encoder. mmseg\'s VisionTransformer has '
                f'one class token, and the distillation token takes part in every attention '
                f'layer, so dropping it changes the features.{dist_hint}')
        del sd['dist_token']
        report.dropped[src + 'dist_token'] = ('DeiT distillation token: mmseg\'s '
                                              'VisionTransformer has a class token only')
        if pos_prefix == 2:
            pos = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
            report.converted[src + 'pos_embed'] = 'distillation-token row removed'
        report.note('distilled DeiT: the distillation token and its pos_embed row are dropped '
                    '(its head too); the encoder then runs with the class token only, so its '
                    'features differ from the distilled model\'s (fine for an initialisation)')
    elif pos_prefix == 0:
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
        report.converted[src + 'pos_embed'] = 'zero row prepended for the class token'
        report.note('the source adds no position embedding to its class token (timm '
                    'no_embed_class): a zero row is prepended, which is exact')
    elif pos_prefix != 1:
        raise CheckpointFormatError(
            f'{src}pos_embed has {pos_prefix} prefix rows besides the {gh}x{gw} grid; '
            f'expected 1 (class token)')
    sd['pos_embed'] = pos
    return gh, gw


def convert_vit_encoder(state_dict: Mapping[str, Tensor], *, src: str = '', dst: str = '',
                        report: ConversionReport,
                        grid_size: Optional[Sequence[int]] = None,
                        patch_size: Optional[int] = None,
                        src_grid: Optional[Sequence[int]] = None,
                        drop_dist_token: bool = True,
                        dist_hint: str = '') -> Dict[str, Tensor]:
    """A timm-layout encoder (keys relative to the encoder) -> mmseg ``VisionTransformer`` keys.

    The work behind :func:`convert_timm_vit`, also used for the ``encoder.`` of Segmenter and
    the encoder of official Prune-and-Merge checkpoints (see there for the key mapping).

    Args:
        state_dict (Mapping): encoder tensors (``cls_token``, ``pos_embed``, ``blocks.<i>.*``).
        src (str): how the report names the source keys' prefix (``'encoder.'``).
        dst (str): prefix of the target keys (``'backbone.'``).
        report (ConversionReport): filled with what happened to every key.
        grid_size (tuple[int, int], optional): target patch grid; None keeps the source grid.
        patch_size (int, optional): target patch size; None keeps the source's.
        src_grid (tuple[int, int], optional): source grid of a non-square ``pos_embed``.
        drop_dist_token (bool): drop a DeiT distillation token (else raise). Default: True.
        dist_hint (str): appended to the distillation-token error.

    Returns:
        dict: ``dst``-prefixed mmseg ``VisionTransformer`` tensors, top-level keys first.

    Raises:
        CheckpointFormatError: keys mmseg's ViT cannot hold (q/k norm, register tokens), no
            class token or ``pos_embed``, a distilled encoder without ``drop_dist_token``, a
            non-square ``pos_embed`` without ``src_grid``, non-contiguous blocks.
    """
    sd = OrderedDict(state_dict)
    _drop_and_check(sd, src, report)
    grid = _class_token_pos_embed(sd, src, report, src_grid=src_grid,
                                  drop_dist_token=drop_dist_token, dist_hint=dist_hint)
    _resample_geometry(sd, grid, grid_size, patch_size, report, src)
    blocks, rest = split_blocks(sd)
    out: Dict[str, Tensor] = OrderedDict()
    unknown = []
    for key, value in rest.items():
        if key in TOP_KEYS:
            out[dst + TOP_KEYS[key]] = value
            if src + key not in report.converted:
                report.renamed[src + key] = dst + TOP_KEYS[key]
        else:
            unknown.append(src + key)
    unknown += convert_blocks(blocks, src=src, dst=dst, report=report, out=out)
    if unknown:
        raise CheckpointFormatError(
            f'unsupported keys in a {report.fmt or "ViT"} checkpoint: {unknown[:10]}'
            + (f' and {len(unknown) - 10} more' if len(unknown) > 10 else '')
            + ' (mmseg\'s VisionTransformer has no such parameters, e.g. q/k norm or register '
              'tokens)')
    if src + 'fc_norm.weight' in report.dropped and 'norm.weight' not in sd:
        report.note('the source pools with fc_norm and has no final token norm (e.g. a '
                    'finetuned MAE): build the backbone with final_norm=False')
    if 'norm_pre.weight' in sd:
        report.note('norm_pre -> ln_pre: build the backbone with pre_norm=True')
    if blocks and list(blocks) != list(range(len(blocks))):
        raise CheckpointFormatError(f'{src}blocks: non-contiguous block indices {list(blocks)}')
    return out


def describe_vit(state_dict: Mapping[str, Tensor], prefix: str = '') -> dict:
    """Architecture of a timm-layout encoder, read off its weights.

    Args:
        state_dict (Mapping): timm-layout tensors.
        prefix (str): prefix of the encoder keys (``'encoder.'``). Default: ``''``.

    Returns:
        dict: ``num_layers`` and, where their tensors exist, ``embed_dims``, ``patch_size``,
        ``mlp_ratio``, ``pos_tokens`` (rows of ``pos_embed``). The number of heads is not
        stored in the weights.
    """
    info = dict(num_layers=len(split_blocks(state_dict, prefix + 'blocks.')[0]))
    if prefix + 'cls_token' in state_dict:
        info['embed_dims'] = int(state_dict[prefix + 'cls_token'].shape[-1])
    patch = patch_size_of(state_dict, prefix, default=None)
    if patch is not None:
        info['patch_size'] = patch
    fc1 = state_dict.get(prefix + 'blocks.0.mlp.fc1.weight')
    if fc1 is not None:
        info['mlp_ratio'] = fc1.shape[0] / fc1.shape[1]
    if prefix + 'pos_embed' in state_dict:
        info['pos_tokens'] = int(state_dict[prefix + 'pos_embed'].shape[1])
    return info


def convert_timm_vit(state_dict: Mapping[str, Tensor],
                     grid_size: Optional[Sequence[int]] = None, *,
                     patch_size: Optional[int] = None,
                     src_grid: Optional[Sequence[int]] = None,
                     drop_dist_token: bool = True,
                     report: Optional[ConversionReport] = None) -> Dict[str, Tensor]:
    """timm ViT / DeiT / AugReg / MAE classification state dict -> mmseg ViT backbone keys.

    Source: timm ``models/vision_transformer.py``; target: mmseg ``VisionTransformer``.

    * ``patch_embed.proj`` -> ``patch_embed.projection``; ``blocks.<i>.norm1/norm2`` ->
      ``layers.<i>.ln1/ln2``; ``attn.qkv`` ((3C, C) in q, k, v order, as
      ``nn.MultiheadAttention``) -> ``attn.attn.in_proj_weight`` / ``in_proj_bias``;
      ``attn.proj`` -> ``attn.attn.out_proj``; ``mlp.fc1`` / ``mlp.fc2`` ->
      ``ffn.layers.0.0`` / ``ffn.layers.1``; ``norm`` -> ``ln1`` (final norm, backbone
      ``final_norm=True``); LayerScale ``ls{1,2}.gamma`` is folded into ``attn.proj`` /
      ``mlp.fc2``.
    * dropped (recorded in ``report``): ``head``, ``head_dist``, ``pre_logits``, ``fc_norm``,
      ``attn_pool``, the MAE decoder (``decoder_*``, ``mask_token``), and the DeiT distillation
      token ``dist_token`` with its ``pos_embed`` row (row 1).
    * ``pos_embed`` ``(1, 1 + H_src * W_src, C)`` is resampled to ``grid_size`` and the patch
      kernel ``(C, 3, P, P)`` to ``patch_size`` with timm's ``resample_abs_pos_embed`` /
      ``resample_patch_embed`` (bicubic, antialiased, as timm's ``checkpoint_filter_fn``).

    Args:
        state_dict (Mapping): timm state dict (unwrapped, see :func:`unwrap_checkpoint`).
        grid_size (tuple[int, int], optional): target patch grid ``(H/P, W/P)``; None keeps
            the source grid.
        patch_size (int, optional): target patch size; None keeps the source's.
        src_grid (tuple[int, int], optional): source grid for a non-square ``pos_embed``;
            inferred (square) if None.
        drop_dist_token (bool): drop a DeiT distillation token (else raise). Default: True.
        report (ConversionReport, optional): filled with what happened to every key.

    Returns:
        dict: mmseg ``VisionTransformer`` state dict (no ``backbone.`` prefix).

    Raises:
        CheckpointFormatError: keys mmseg's ViT cannot hold (q/k norm, register tokens), no
            class token, a non-square ``pos_embed`` without ``src_grid``.
    """
    report = report if report is not None else ConversionReport()
    report.fmt = report.fmt or 'timm'
    report.note(f'source encoder: {describe_vit(state_dict)}')
    return convert_vit_encoder(state_dict, report=report, grid_size=grid_size,
                               patch_size=patch_size, src_grid=src_grid,
                               drop_dist_token=drop_dist_token)


__all__ = ['BLOCK_KEYS', 'LAYER_SCALE', 'TOP_KEYS', 'DROPPABLE_PREFIXES', 'source_grid',
           'resample_pos_embed', 'convert_block', 'convert_blocks', 'convert_vit_encoder',
           'describe_vit', 'convert_timm_vit']
