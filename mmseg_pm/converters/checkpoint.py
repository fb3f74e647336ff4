"""Checkpoint converters (timm / Segmenter / official Prune-and-Merge -> mmseg keys) and the
pretrained-weight loader of ``PruneMergeViT`` (``init_cfg=dict(type='Pretrained', ...)``).

Pure dict-to-dict functions, used by ``tools/model_converters/*.py`` and by
:func:`load_pretrained_backbone`. Source layouts (:data:`FORMATS`):

* ``timm``: timm ``VisionTransformer`` classification checkpoints: AugReg
  ``vit_{tiny,small,base,large}_patch16_384``, DeiT ``deit_{tiny,small,base}_patch16_224`` (and
  the ``_distilled`` variants), MAE ViT-B (``vit_base_patch16_224.mae``, also the MAE pretrain
  file with its decoder). Keys ``patch_embed.proj.*``, ``cls_token``, ``[dist_token]``,
  ``pos_embed``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,[ls1.gamma],norm2,mlp.fc1,mlp.fc2,
  [ls2.gamma]}.*``, ``norm.*``, ``head.*``.
* ``segmenter``: official rstrudel/segmenter checkpoints (``{'model': state_dict, ...}``), keys
  ``encoder.<timm layout above>`` and ``decoder.{proj_dec, cls_emb, blocks.<i>.*, decoder_norm,
  mask_norm, proj_patch, proj_classes}`` (mask transformer) or ``decoder.head.*`` (linear).
* ``pm_vit``: official PM classification checkpoints (NUST-Machine-Intelligence-Laboratory/
  prune_and_merge ``pm-vit``, models ``tmvit_*``): the timm layout plus, per block,
  ``blocks.<i>.attn.{merge_matrix (K+1, N+1), recover_matrix (N+1, K+1), token_mask (N+1,),
  bias}`` and the top-level list ``channels`` (K_l + 1 per layer); method.md §6.
* ``pm_segmenter``: official PM-Segmenter checkpoints (wafev/PM-Segmenter): the Segmenter layout
  plus dense merge / recover matrices and token masks in the merge blocks (under ``attn.`` as in
  the classification code, or directly in the block), and the top-level ``merged_tokens`` (K_l +
  1 per layer), ``merge_list`` and ``recover_list``; method.md §7.
* ``mmseg`` / ``mmseg_segmentor``: already in mmseg's layout (a bare backbone state dict such as
  mmseg's converted pretrain files, or a segmentor checkpoint with ``backbone.*`` keys,
  including compressed mmseg_pm checkpoints with ``backbone.pm.<a>.*``).

Target layout: mmseg's ``VisionTransformer`` (``patch_embed.projection.*``, ``cls_token``,
``pos_embed`` (1, 1 + H_g * W_g, C), ``layers.<i>.{ln1, attn.attn.in_proj_weight,
attn.attn.in_proj_bias, attn.attn.out_proj, ln2, ffn.layers.0.0, ffn.layers.1}.*``, ``ln1.*``
(final norm), ``ln_pre.*`` (pre-norm)) and ``SegmenterMaskTransformerHead`` (``dec_proj``,
``cls_emb``, ``layers.<i>.*``, ``decoder_norm``, ``mask_norm``, ``patch_proj``,
``classes_proj``). Position embeddings are resampled with timm's ``resample_abs_pos_embed``
(through ``checkpoint_filter_fn``).
"""
import math
import os.path as osp
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import CheckpointFormatError, CheckpointMismatchError
from ..errors import StructureError as PMStructureError
from ..functional import prune_merge as pm
from ..functional.prune_merge import PMStructure
from ..functional.prune_merge_dense import structure_from_dense

#: supported source layouts and what they look like (used in error messages)
FORMATS = OrderedDict(
    mmseg='mmseg VisionTransformer backbone keys (patch_embed.projection.*, layers.<i>.*, '
          'ln1.*), e.g. the pretrain files of mmseg\'s Segmenter configs or the output of '
          'tools/model_converters/timm2mmseg.py',
    mmseg_segmentor='mmseg / mmseg_pm segmentor checkpoint (backbone.*, decode_head.*), '
                    'including compressed mmseg_pm checkpoints (backbone.pm.<a>.*)',
    timm='timm ViT / DeiT (also distilled) / AugReg / MAE classification checkpoint '
         '(patch_embed.proj.*, blocks.<i>.attn.qkv.*, norm.*, head.*)',
    pm_vit='official Prune-and-Merge classification checkpoint (pm-vit tmvit_*: timm layout '
           'plus blocks.<i>.attn.{merge_matrix,recover_matrix,token_mask,bias}, channels)',
    segmenter='official rstrudel/segmenter checkpoint (encoder.*, decoder.*)',
    pm_segmenter='official PM-Segmenter checkpoint (Segmenter layout plus per-block '
                 'merge/recover matrices; merged_tokens, merge_list, recover_list)',
)

#: the tools/model_converters script for each source format
CONVERTER_SCRIPTS = dict(timm='timm2mmseg.py', segmenter='segmenter2mmseg.py',
                         pm_vit='pm_official2mmseg_pm.py', pm_segmenter='pm_official2mmseg_pm.py')


def wrong_format_message(src: str, fmt: str, expected: str) -> str:
    """One-line message for a ``src`` of format ``fmt`` given to the ``expected`` converter."""
    if fmt in CONVERTER_SCRIPTS:
        what = f'use tools/model_converters/{CONVERTER_SCRIPTS[fmt]}'
    else:
        what = 'it is already in mmseg\'s key layout and needs no conversion'
    return f'{src} is a {fmt} checkpoint ({FORMATS[fmt]}), not {expected}: {what}'


def grid_from_img_size(img_size: Optional[Sequence[int]],
                       patch_size: int) -> Optional[Tuple[int, int]]:
    """Patch grid ``(H // patch, W // patch)`` of an input size ``(H, W)`` (None -> None).

    Raises:
        ValueError: a side smaller than one patch.
    """
    if img_size is None:
        return None
    h, w = (int(v) for v in img_size)
    if h < patch_size or w < patch_size:
        raise ValueError(f'image size {h}x{w} is smaller than one {patch_size}px patch')
    return h // patch_size, w // patch_size


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
#: official Prune-and-Merge tensors inside a block
PM_TENSOR_RE = re.compile(
    r'^(?P<pre>(?:encoder\.)?blocks\.(?P<blk>\d+)\.)(?P<attn>attn\.)?'
    r'(?P<name>merge_matrix|recover_matrix|token_mask|bias)$')


@dataclass
class ConversionReport:
    """What a converter did with every source key: the summary the tools print.

    Attributes:
        fmt (str): detected source format (a key of :data:`FORMATS`).
        renamed (dict): source key -> target key, value unchanged.
        converted (dict): source key -> description of the change (reshaped, transposed,
            resampled, folded, derived), value changed.
        dropped (dict): source key -> why it is not in the output.
        notes (list[str]): anything the user should know (dist token dropped, LN eps, ...).
    """
    fmt: str = ''
    renamed: Dict[str, str] = field(default_factory=OrderedDict)
    converted: Dict[str, str] = field(default_factory=OrderedDict)
    dropped: Dict[str, str] = field(default_factory=OrderedDict)
    notes: List[str] = field(default_factory=list)

    def note(self, msg: str) -> None:
        """Add a note for the user (once)."""
        if msg not in self.notes:
            self.notes.append(msg)

    @property
    def matched(self) -> int:
        """Number of source keys that went into the output (renamed or converted)."""
        return len(self.renamed) + len(self.converted)

    def summary(self) -> str:
        """Multi-line human-readable summary: matched, converted, dropped (grouped by reason)."""
        total = self.matched + len(self.dropped)
        lines = [f'source format: {self.fmt} ({FORMATS.get(self.fmt, "?")})',
                 f'matched {self.matched} of {total} source keys: {len(self.renamed)} mapped by '
                 f'name ({sum(k == v for k, v in self.renamed.items())} unchanged), '
                 f'{len(self.converted)} converted']
        lines += self._grouped(self.converted, 'converted')
        lines.append(f'dropped {len(self.dropped)} keys' + (':' if self.dropped else ''))
        lines += self._grouped(self.dropped, 'dropped')
        lines += [f'note: {n}' for n in self.notes]
        return '\n'.join(lines)

    @staticmethod
    def _grouped(entries: Dict[str, str], verb: str) -> List[str]:
        by_reason: Dict[str, List[str]] = OrderedDict()
        for key, why in entries.items():
            by_reason.setdefault(why, []).append(key)
        lines = []
        for why, keys in by_reason.items():
            shown = ', '.join(keys[:3]) + (f', ... ({len(keys)} keys)' if len(keys) > 3 else '')
            lines.append(f'  {verb} {shown}: {why}')
        return lines


# --------------------------------------------------------------------------------------------
# reading and recognising checkpoints
# --------------------------------------------------------------------------------------------
_WRAPPERS = ('state_dict', 'model', 'module')


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, Mapping) and any(isinstance(v, Tensor) for v in obj.values())
            and not any(isinstance(obj.get(k), Mapping) for k in _WRAPPERS))


def unwrap_checkpoint(checkpoint: Mapping) -> Tuple[Dict[str, Tensor], dict]:
    """Split a loaded checkpoint into its state dict and its other top-level entries.

    Follows ``state_dict`` (MMEngine, timm train scripts), ``model`` (DeiT, MAE, Segmenter,
    official PM code) and ``module`` nesting, and strips a DDP ``module.`` prefix.

    Args:
        checkpoint (Mapping): what ``torch.load`` returned (or already a state dict).

    Returns:
        tuple[dict, dict]: the state dict (name -> Tensor) and the remaining top-level entries
        (e.g. ``channels``, ``merged_tokens``, ``merge_list``, ``recover_list``, ``meta``).

    Raises:
        CheckpointFormatError: not a dict, or no state dict inside.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointFormatError(f'a checkpoint must be a dict, got {type(checkpoint).__name__}')
    extras: dict = {}
    sd = checkpoint
    while not _is_state_dict(sd):
        key = next((k for k in _WRAPPERS if isinstance(sd.get(k), Mapping)), None)
        if key is None:
            keys = list(sd)[:10]
            raise CheckpointFormatError(
                f'no state dict found in the checkpoint (top-level keys {keys}); expected '
                f'tensors at the top level or under "state_dict" / "model"')
        extras.update({k: v for k, v in sd.items() if k != key and k not in extras})
        sd = sd[key]
    extras.update({k: v for k, v in sd.items() if not isinstance(v, Tensor)})
    sd = OrderedDict((k, v) for k, v in sd.items() if isinstance(v, Tensor))
    if all(k.startswith('module.') for k in sd):
        sd = OrderedDict((k[len('module.'):], v) for k, v in sd.items())
    return sd, extras


def read_checkpoint(path: str) -> Tuple[Dict[str, Tensor], dict]:
    """Load a local checkpoint file on the CPU and :func:`unwrap_checkpoint` it.

    ``.safetensors`` files (timm weights from the Hugging Face hub) are read with
    ``safetensors``; anything else with ``torch.load(weights_only=False)`` (official
    checkpoints pickle ``argparse`` namespaces): only load files you trust.

    Raises:
        FileNotFoundError: the file does not exist, or ``path`` is a URL (nothing is downloaded).
        CheckpointFormatError: the file cannot be read, or holds no state dict.
    """
    path = str(path)
    if path.startswith(('http://', 'https://')):
        raise FileNotFoundError(
            f'{path} is a URL: mmseg_pm does not download weights. Download it on a machine '
            f'with internet access, place it under checkpoints/ and give the local path')
    if not osp.isfile(osp.expanduser(path)):
        raise FileNotFoundError(
            f'pretrained checkpoint not found: {path} (looked in {osp.abspath(path)}). Place '
            f'the local file there (mmseg_pm never downloads; timm / Segmenter / official '
            f'Prune-and-Merge files load directly or convert with tools/model_converters/), '
            f'or build without it: init_cfg=None, or --cfg-options model.pretrained=None')
    path = osp.expanduser(path)
    try:
        if path.endswith('.safetensors'):  # timm weights from the Hugging Face hub
            from safetensors.torch import load_file
            checkpoint = load_file(path, device='cpu')
        else:
            checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # noqa: BLE001  (any reader error: say which file and why)
        hint = (' (a JAX .npz: convert it with mmseg\'s tools/model_converters/vitjax2mmseg.py '
                'or load it in timm and save the state dict)' if path.endswith('.npz') else '')
        raise CheckpointFormatError(f'cannot read {path}: {type(e).__name__}: '
                                    f'{str(e).splitlines()[0] if str(e) else ""}{hint}') from e
    return unwrap_checkpoint(checkpoint)


def detect_format(state_dict: Mapping[str, Tensor]) -> str:
    """Name of the key layout of ``state_dict`` (a key of :data:`FORMATS`).

    Args:
        state_dict (Mapping): an unwrapped state dict (see :func:`unwrap_checkpoint`).

    Returns:
        str: ``'mmseg_segmentor'``, ``'mmseg'``, ``'pm_segmenter'``, ``'segmenter'``,
        ``'pm_vit'`` or ``'timm'``.

    Raises:
        CheckpointFormatError: unknown layout; the message lists the first keys and the
            supported formats.
    """
    keys = list(state_dict)
    has_pm = any(PM_TENSOR_RE.match(k) and not k.endswith(('.token_mask', '.bias'))
                 for k in keys)
    if any(k.startswith('backbone.') for k in keys):
        return 'mmseg_segmentor'
    if any(k == 'patch_embed.projection.weight' or re.match(r'^layers\.\d+\.ln1\.', k)
           for k in keys):
        return 'mmseg'
    if any(k.startswith('encoder.blocks.') or k == 'encoder.patch_embed.proj.weight'
           for k in keys):
        return 'pm_segmenter' if has_pm else 'segmenter'
    if any(re.match(r'^blocks\.\d+\.attn\.qkv\.', k) or k == 'patch_embed.proj.weight'
           for k in keys):
        return 'pm_vit' if has_pm else 'timm'
    supported = '; '.join(f'{k}: {v}' for k, v in FORMATS.items())
    raise CheckpointFormatError(
        f'unrecognised checkpoint key layout (first keys: {keys[:8]}). Supported formats: '
        f'{supported}')


# --------------------------------------------------------------------------------------------
# timm / Segmenter encoder -> mmseg VisionTransformer
# --------------------------------------------------------------------------------------------
def _square_side(n: int) -> Optional[int]:
    side = math.isqrt(n)
    return side if side * side == n else None


def _source_grid(pos_len: int, num_prefix: int, src_grid: Optional[Sequence[int]]):
    """(grid, prefix rows in pos_embed) of a source ``pos_embed`` with ``pos_len`` rows."""
    if src_grid is not None:
        gh, gw = (int(v) for v in src_grid)
        return (gh, gw), pos_len - gh * gw
    # at most one of L, L-1, L-2 is a square (consecutive squares differ by >= 3)
    for p in (num_prefix, 0, 1, 2):
        side = _square_side(pos_len - p) if pos_len - p > 0 else None
        if side:
            return (side, side), p
    raise CheckpointFormatError(
        f'cannot infer the patch grid of a pos_embed with {pos_len} rows (not a square grid '
        f'plus {num_prefix} prefix tokens); give the source grid (--src-img-size)')


def resample_pos_embed(pos_embed: Tensor, new_grid: Sequence[int],
                       old_grid: Optional[Sequence[int]] = None, num_prefix: int = 1,
                       interpolation: str = 'bicubic') -> Tensor:
    """Resample an absolute position embedding to another patch grid (timm
    ``resample_abs_pos_embed``; prefix rows are kept unchanged).

    Args:
        pos_embed (Tensor): ``(1, P + H_old * W_old, C)``.
        new_grid (tuple[int, int]): ``(H_new, W_new)``.
        old_grid (tuple[int, int], optional): ``(H_old, W_old)``; square if None.
        num_prefix (int): P. Default: 1 (the class token).
        interpolation (str): ``F.interpolate`` mode. Default: ``'bicubic'``.

    Returns:
        Tensor: ``(1, P + H_new * W_new, C)``, same dtype.
    """
    from timm.layers import resample_abs_pos_embed
    return resample_abs_pos_embed(pos_embed, new_size=[int(v) for v in new_grid],
                                  old_size=None if old_grid is None else
                                  [int(v) for v in old_grid],
                                  num_prefix_tokens=num_prefix, interpolation=interpolation)


def _timm_geometry_filter(sd: Dict[str, Tensor], src_grid, grid, patch_size, report, src):
    """Resample ``pos_embed`` / ``patch_embed.proj.weight`` with timm's ``checkpoint_filter_fn``
    against a depth-0 timm ``VisionTransformer`` that has the target geometry."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    pos, weight = sd['pos_embed'], sd.get('patch_embed.proj.weight')
    src_patch = int(weight.shape[-1]) if weight is not None and weight.dim() == 4 else 16
    patch = int(patch_size or src_patch)
    grid = tuple(int(v) for v in (grid or src_grid))
    if tuple(src_grid) == grid and patch == src_patch:
        return
    geometry = VisionTransformer(
        img_size=(grid[0] * patch, grid[1] * patch), patch_size=patch,
        in_chans=int(weight.shape[1]) if weight is not None else 3, embed_dim=int(pos.shape[-1]),
        depth=0, num_heads=1, num_classes=0, class_token=True)
    # tells timm the source grid (get_pretrained_grid_size), also for non-square sources
    geometry.pretrained_model_args = dict(img_size=(src_grid[0] * src_patch,
                                                    src_grid[1] * src_patch))
    sub = {'pos_embed': pos}
    if weight is not None:
        sub['patch_embed.proj.weight'] = weight
    out = checkpoint_filter_fn(sub, geometry)
    if tuple(out['pos_embed'].shape) != tuple(pos.shape) or tuple(src_grid) != grid:
        sd['pos_embed'] = out['pos_embed']
        report.converted[src + 'pos_embed'] = (
            f'resampled {src_grid[0]}x{src_grid[1]} -> {grid[0]}x{grid[1]} patch grid (timm '
            f'resample_abs_pos_embed, bicubic)')
    if weight is not None and patch != src_patch:
        sd['patch_embed.proj.weight'] = out['patch_embed.proj.weight']
        report.converted[src + 'patch_embed.proj.weight'] = (
            f'patch kernel resampled {src_patch} -> {patch} (timm resample_patch_embed)')


def _convert_block(block: Dict[str, Tensor], src: str, dst: str, report: ConversionReport,
                   out: Dict[str, Tensor]) -> List[str]:
    """One timm / Segmenter block (keys relative to ``src``) -> mmseg layer keys under ``dst``.

    LayerScale ``gamma`` is folded into the preceding linear layer (exact:
    ``gamma * (W x + b) = (gamma W) x + gamma b``); BEiT-style ``q_bias`` / ``v_bias`` become
    ``in_proj_bias = [q_bias, 0, v_bias]``. Returns the keys it did not recognise.
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


def _convert_encoder(state_dict: Mapping[str, Tensor], src: str, dst: str,
                     report: ConversionReport, grid_size=None, patch_size=None, src_grid=None,
                     drop_dist_token: bool = True, dist_hint: str = '') -> Dict[str, Tensor]:
    sd = OrderedDict(state_dict)
    out: Dict[str, Tensor] = OrderedDict()
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
    has_dist = 'dist_token' in sd
    (gh, gw), pos_prefix = _source_grid(int(sd['pos_embed'].shape[1]), 1 + has_dist, src_grid)
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
    _timm_geometry_filter(sd, (gh, gw), grid_size, patch_size, report, src)

    blocks: Dict[int, Dict[str, Tensor]] = {}
    unknown = []
    for key, value in sd.items():
        m = re.match(r'^blocks\.(\d+)\.(.+)$', key)
        if m:
            blocks.setdefault(int(m.group(1)), OrderedDict())[m.group(2)] = value
        elif key in TOP_KEYS:
            out[dst + TOP_KEYS[key]] = value
            if src + key not in report.converted:
                report.renamed[src + key] = dst + TOP_KEYS[key]
        else:
            unknown.append(src + key)
    for i in sorted(blocks):
        unknown += _convert_block(blocks[i], f'{src}blocks.{i}.', f'{dst}layers.{i}.', report,
                                  out)
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
    if blocks and sorted(blocks) != list(range(len(blocks))):
        raise CheckpointFormatError(f'{src}blocks: non-contiguous block indices '
                                    f'{sorted(blocks)}')
    return out


def describe_vit(state_dict: Mapping[str, Tensor], prefix: str = '') -> dict:
    """Architecture of a timm-layout encoder read off its weights.

    Returns:
        dict: ``embed_dims``, ``num_layers``, ``patch_size``, ``mlp_ratio``, ``pos_tokens``
        (rows of ``pos_embed``); the number of heads cannot be read from the weights.
    """
    blocks = {int(m.group(1)) for k in state_dict
              for m in [re.match(rf'^{re.escape(prefix)}blocks\.(\d+)\.', k)] if m}
    info = dict(num_layers=len(blocks))
    if prefix + 'cls_token' in state_dict:
        info['embed_dims'] = int(state_dict[prefix + 'cls_token'].shape[-1])
    if prefix + 'patch_embed.proj.weight' in state_dict:
        info['patch_size'] = int(state_dict[prefix + 'patch_embed.proj.weight'].shape[-1])
    fc1 = state_dict.get(prefix + 'blocks.0.mlp.fc1.weight')
    if fc1 is not None:
        info['mlp_ratio'] = fc1.shape[0] / fc1.shape[1]
    if prefix + 'pos_embed' in state_dict:
        info['pos_tokens'] = int(state_dict[prefix + 'pos_embed'].shape[1])
    return info


def convert_timm_vit(state_dict: Mapping[str, Tensor],
                     grid_size: Optional[Sequence[int]] = None,
                     patch_size: Optional[int] = None,
                     src_grid: Optional[Sequence[int]] = None,
                     drop_dist_token: bool = True,
                     report: Optional[ConversionReport] = None) -> Dict[str, Tensor]:
    """timm ViT / DeiT / AugReg / MAE classification state dict -> mmseg ViT backbone keys.

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
      kernel to ``patch_size`` with timm's ``checkpoint_filter_fn`` (``resample_abs_pos_embed``,
      bicubic; ``resample_patch_embed``).

    Args:
        state_dict (Mapping): timm state dict (unwrapped, see :func:`unwrap_checkpoint`).
        grid_size (tuple[int, int], optional): target patch grid ``(H/16, W/16)``; None keeps
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
    info = describe_vit(state_dict)
    report.note(f'source encoder: {info}')
    return _convert_encoder(state_dict, '', '', report, grid_size, patch_size, src_grid,
                            drop_dist_token)


# --------------------------------------------------------------------------------------------
# Segmenter (rstrudel) -> mmseg EncoderDecoder
# --------------------------------------------------------------------------------------------
def _convert_segmenter_decoder(dec: Mapping[str, Tensor], report: ConversionReport,
                               out: Dict[str, Tensor]) -> None:
    src, dst = 'decoder.', 'decode_head.'
    dec = OrderedDict(dec)
    if 'cls_emb' in dec:  # mask transformer
        direct = {'proj_dec.weight': 'dec_proj.weight', 'proj_dec.bias': 'dec_proj.bias',
                  'cls_emb': 'cls_emb', 'decoder_norm.weight': 'decoder_norm.weight',
                  'decoder_norm.bias': 'decoder_norm.bias', 'mask_norm.weight':
                  'mask_norm.weight', 'mask_norm.bias': 'mask_norm.bias'}
        blocks: Dict[int, Dict[str, Tensor]] = {}
        unknown = []
        for key, value in dec.items():
            m = re.match(r'^blocks\.(\d+)\.(.+)$', key)
            if m:
                blocks.setdefault(int(m.group(1)), OrderedDict())[m.group(2)] = value
            elif key in direct:
                out[dst + direct[key]] = value
                report.renamed[src + key] = dst + direct[key]
            elif key in ('proj_patch', 'proj_classes'):
                name = 'patch_proj' if key == 'proj_patch' else 'classes_proj'
                # Segmenter computes x @ P, nn.Linear x @ W^T: W = P^T
                out[f'{dst}{name}.weight'] = value.t().contiguous()
                report.converted[src + key] = f'transposed into {dst}{name}.weight (x @ P)'
            else:
                unknown.append(src + key)
        for i in sorted(blocks):
            unknown += _convert_block(blocks[i], f'{src}blocks.{i}.', f'{dst}layers.{i}.',
                                      report, out)
        if unknown:
            raise CheckpointFormatError(f'unsupported Segmenter decoder keys: {unknown[:10]}')
        d_model = int(dec['cls_emb'].shape[-1])
        n_cls = int(dec['cls_emb'].shape[1])
        c_enc = int(dec['proj_dec.weight'].shape[1]) if 'proj_dec.weight' in dec else '?'
        report.note(f'decode head: SegmenterMaskTransformerHead(in_channels={c_enc}, '
                    f'channels={d_model}, embed_dims={d_model}, num_layers={len(blocks)}, '
                    f'num_classes={n_cls}); num_heads is not stored in the weights (Segmenter '
                    f'uses embed_dims // 64)')
    elif 'head.weight' in dec:  # linear decoder
        unknown = [src + k for k in dec if k not in ('head.weight', 'head.bias')]
        if unknown:
            raise CheckpointFormatError(f'unsupported Segmenter decoder keys: {unknown[:10]}')
        out[dst + 'conv_seg.weight'] = dec['head.weight'][:, :, None, None]
        report.converted[src + 'head.weight'] = f'reshaped to {dst}conv_seg.weight (1x1 conv)'
        if 'head.bias' in dec:
            out[dst + 'conv_seg.bias'] = dec['head.bias']
            report.renamed[src + 'head.bias'] = dst + 'conv_seg.bias'
        n_cls, c = dec['head.weight'].shape
        report.note(f'decode head: FCNHead(in_channels={c}, channels={c}, num_convs=0, '
                    f'concat_input=False, num_classes={n_cls}) as in mmseg\'s '
                    f'segmenter_vit-s_fcn config')
    else:
        raise CheckpointFormatError(
            f'unknown Segmenter decoder (keys {list(dec)[:8]}): expected the mask transformer '
            f'(decoder.cls_emb, ...) or the linear decoder (decoder.head.*)')


def convert_segmenter(checkpoint: Mapping, grid_size: Optional[Sequence[int]] = None,
                      drop_dist_token: bool = False,
                      report: Optional[ConversionReport] = None, *,
                      decoder: bool = True) -> Dict[str, Tensor]:
    """Official rstrudel/segmenter checkpoint -> mmseg ``EncoderDecoder`` state dict.

    ``encoder.*`` (timm layout, see :func:`convert_timm_vit`) becomes ``backbone.*`` of mmseg's
    ``VisionTransformer`` (``final_norm=True``; the encoder's ImageNet ``head`` is dropped);
    the mask-transformer decoder becomes ``decode_head.*`` of ``SegmenterMaskTransformerHead``:
    ``proj_dec`` -> ``dec_proj``, ``cls_emb`` (1, n_cls, D), ``blocks.<i>`` -> ``layers.<i>``,
    ``decoder_norm``, ``mask_norm``, and the ``(D, D)`` parameters ``proj_patch`` /
    ``proj_classes`` (applied as ``x @ P``) transposed into ``patch_proj.weight`` /
    ``classes_proj.weight`` (``nn.Linear``). The linear decoder ``decoder.head`` becomes an
    ``FCNHead`` ``conv_seg`` (1x1 conv).

    Note: rstrudel/segmenter builds its LayerNorms with PyTorch's default eps 1e-5, while
    mmseg's Segmenter configs use 1e-6 in the backbone; set the backbone's ``norm_cfg`` eps to
    1e-5 to reproduce the official model exactly.

    Args:
        checkpoint (Mapping): the loaded file (``{'model': state_dict, ...}``) or its state dict.
        grid_size (tuple[int, int], optional): target patch grid for ``pos_embed``; None keeps
            the training grid.
        drop_dist_token (bool): drop the distillation token of a DeiT encoder (changes the
            features: it takes part in attention). Default: False (raise).
        report (ConversionReport, optional): filled with what happened to every key.
        decoder (bool): convert the decoder too; False drops ``decoder.*`` (recorded in
            ``report``), as the backbone loader does. Default: True.

    Returns:
        dict: ``backbone.*`` and ``decode_head.*`` keys.

    Raises:
        CheckpointFormatError: not a Segmenter layout, unknown decoder or encoder keys, a
            distilled encoder without ``drop_dist_token``.
    """
    sd, _ = unwrap_checkpoint(checkpoint)
    report = report if report is not None else ConversionReport()
    report.fmt = report.fmt or 'segmenter'
    enc = OrderedDict((k[len('encoder.'):], v) for k, v in sd.items() if k.startswith('encoder.'))
    dec = OrderedDict((k[len('decoder.'):], v) for k, v in sd.items() if k.startswith('decoder.'))
    other = [k for k in sd if not k.startswith(('encoder.', 'decoder.'))]
    if other or not enc:
        raise CheckpointFormatError(
            f'not a Segmenter checkpoint: expected encoder.* and decoder.* keys, found '
            f'{(other or list(sd))[:8]}')
    report.note(f'source encoder: {describe_vit(enc)}')
    out = _convert_encoder(enc, 'encoder.', 'backbone.', report, grid_size, None, None,
                           drop_dist_token, dist_hint=' Pass drop_dist_token=True '
                           '(--drop-dist-token) to convert anyway.')
    if dec and not decoder:
        for key in dec:
            report.dropped['decoder.' + key] = 'Segmenter decoder, not part of the backbone'
    elif dec:
        _convert_segmenter_decoder(dec, report, out)
    else:
        report.note('no decoder.* keys: only the encoder was converted')
    report.note('rstrudel/segmenter uses LayerNorm eps 1e-5 (PyTorch default); mmseg\'s '
                'Segmenter configs use eps 1e-6 in the backbone: set norm_cfg=dict(type="LN", '
                'eps=1e-5) to reproduce the official model exactly')
    return out


# --------------------------------------------------------------------------------------------
# official Prune-and-Merge checkpoints -> compressed mmseg_pm checkpoints (dense)
# --------------------------------------------------------------------------------------------
def _pm_block_tensors(sd: Mapping[str, Tensor]) -> Dict[int, Dict[str, Tuple[str, Tensor]]]:
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


def convert_pm_official(checkpoint: Mapping, grid_size: Optional[Sequence[int]] = None,
                        report: Optional[ConversionReport] = None, *,
                        decoder: bool = True) -> Dict[str, Tensor]:
    """Official Prune-and-Merge checkpoint -> compressed mmseg_pm state dict (dense units).

    Sources (method.md §6, §7): the classification ``pm-vit`` (``tmvit_*``; every block holds
    ``attn.merge_matrix`` M (K_l+1, N+1), ``attn.recover_matrix`` R (N+1, K_l+1),
    ``attn.token_mask`` t (N+1) and the unused ``attn.bias``; top-level ``channels`` = K_l+1 per
    layer) and PM-Segmenter (Segmenter layout; the matrices in the merge blocks, with or
    without the ``attn.`` level; top-level ``merged_tokens``, ``merge_list``,
    ``recover_list``).

    Each merge block ``a`` (``merge_list``, else every block holding a merge matrix) becomes a
    unit ``backbone.pm.<a>.*`` in the dense representation of :class:`PruneMerge`: ``span``
    = (a, b) with b the paired ``recover_list`` entry (else a), ``grid_size``, ``assign``,
    ``centers`` (read off the support, see :func:`structure_from_dense`), ``merge_matrix`` =
    M, ``restore_matrix`` = R (from block b if it holds one of the right shape, else from
    block a), ``token_mask`` = t (all ones if absent: span mode builds none). The values of
    M, R and t are kept exactly. The encoder becomes ``backbone.*`` (:func:`convert_timm_vit`)
    and a Segmenter decoder ``decode_head.*`` (:func:`convert_segmenter`); ``pos_embed`` is
    resampled to the structure's grid if it differs. :func:`pm_structure_from_state_dict`
    gives the matching ``pm_cfg`` and the structure record.

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
        CheckpointFormatError: not an official PM layout, inconsistent lists, a distilled
            encoder (not supported by the official builder either, method.md §10).
        PMStructureError: matrices of inconsistent shapes, a K that disagrees with
            ``channels`` / ``merged_tokens``, units on different grids, or a drifted structure
            that cannot be read (see :func:`structure_from_dense`).
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
            f'(the official builder does not support them either, method.md §10)')
    num_layers = len({int(m.group(1)) for k in sd
                      for m in [re.match(rf'^{re.escape(enc_prefix)}blocks\.(\d+)\.', k)] if m})
    blocks = _pm_block_tensors(sd)
    tokens_name = 'channels' if 'channels' in extras else 'merged_tokens'
    tokens = _as_int_list(extras.get(tokens_name), tokens_name)
    merge_list = _as_int_list(extras.get('merge_list'), 'merge_list') or None
    recover_list = _as_int_list(extras.get('recover_list'), 'recover_list') or None
    with_matrix = sorted(i for i, t in blocks.items() if 'merge_matrix' in t)
    if merge_list is None:
        if 'merge_list' in extras:
            report.note('merge_list is empty (the older segm/prune_finetune.py saves it so, '
                        'method.md §7.1-3): using every block that holds a merge matrix')
        merge_list = with_matrix
    merge_list = [i % num_layers for i in merge_list]
    missing = [i for i in merge_list if i not in with_matrix]
    if missing:
        raise CheckpointFormatError(f'merge_list names blocks {missing} that hold no merge '
                                    f'matrix (blocks with one: {with_matrix})')
    if recover_list is not None and fmt == 'pm_vit':
        report.note('recover_list ignored: the classification code merges and recovers in the '
                    'same block (method.md §6.1-12)')
        recover_list = None
    if recover_list is not None and len(recover_list) != len(merge_list):
        raise CheckpointFormatError(f'merge_list {merge_list} and recover_list {recover_list} '
                                    f'differ in length')
    units = []  # (a, b, index in merge_list, M key, M, R key, R)
    for idx, a in enumerate(merge_list):
        key_m, m = blocks[a]['merge_matrix']
        if m.dim() != 2:
            raise PMStructureError(f'{key_m} must be 2-D (K + 1, N + 1), got {tuple(m.shape)}')
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
            raise PMStructureError(f'block {a}: no recover matrix (looked in blocks {a} and {b})')
        units.append((a, b, idx, key_m, m, key_r, r))
    units.sort(key=lambda u: u[0])
    spans = [(u[0], u[1]) for u in units]
    for (a0, b0), (a1, _) in zip(spans, spans[1:]):
        if a1 <= b0:
            raise CheckpointFormatError(f'spans ({a0}, {b0}) and ({a1}, ...) overlap')

    out: Dict[str, Tensor] = OrderedDict()
    used = set()
    grid = None
    for a, b, idx, key_m, m, key_r, r in units:
        where = f'block {a}' if a == b else f'span ({a}, {b})'
        k1, n1 = (int(v) for v in m.shape)
        key_t, t = blocks[a].get('token_mask', (None, None))
        if t is None:
            report.note(f'{where}: no token mask (span mode builds none): all ones, nothing '
                        f'pruned')
        if tokens is not None:
            expected = (tokens[a] if len(tokens) == num_layers else
                        tokens[idx] if len(tokens) == len(units) else None)
            if expected is None:
                report.note(f'{tokens_name} has {len(tokens)} entries for {num_layers} layers / '
                            f'{len(units)} units: not checked')
            elif expected != k1:
                raise PMStructureError(f'{where}: {tokens_name}[{a}] = {expected} but the merge '
                                       f'matrix has {k1} rows (K + 1)')
        s, m2, r2, notes = structure_from_dense(m, r, t, grid_size, 1, where)
        for msg in notes:
            report.note(msg)
        if grid is not None and grid != s.grid_size:
            raise PMStructureError(f'{where}: grid {s.grid_size} differs from the other units\' '
                                   f'{grid}')
        grid = s.grid_size
        dst = f'backbone.pm.{a}.'
        out[dst + 'span'] = torch.tensor([a, b])
        out[dst + 'grid_size'] = torch.tensor(list(grid))
        out[dst + 'assign'] = s.assign
        out[dst + 'centers'] = s.centers
        out[dst + 'merge_matrix'] = m2
        out[dst + 'restore_matrix'] = r2
        out[dst + 'token_mask'] = (t.detach().flatten().clone() if t is not None else
                                   torch.ones(n1, dtype=m.dtype))
        report.converted[key_m] = ('-> backbone.pm.<a>.merge_matrix (dense, values kept); '
                                   'assign / centers read off its support')
        report.converted[key_r] = '-> backbone.pm.<a>.restore_matrix (dense, values kept)'
        if key_t is not None:
            report.converted[key_t] = '-> backbone.pm.<a>.token_mask (flattened)'
        used.update(k for k in (key_m, key_r, key_t) if k)
    for i, tensors in blocks.items():
        for name, (key, _) in tensors.items():
            if key in used:
                continue
            if name == 'bias':
                why = ('official ToMe-style attention bias log(sqrt(row sum)): computed but '
                       'never added to the logits (method.md §1.4)')
            elif any(a <= i <= b for a, b in spans):
                why = 'superseded: the unit of this span takes M from its first block and R ' \
                      'from its last'
            else:
                why = 'block not in merge_list: the official model does not apply it'
            report.dropped[key] = why
    rest = OrderedDict((k, v) for k, v in sd.items() if not PM_TENSOR_RE.match(k))
    if fmt == 'pm_vit':
        report.note(f'source encoder: {describe_vit(rest)}')
        out.update(_convert_encoder(rest, '', 'backbone.', report, grid, None, None, False))
        trainable = 'both trained in the official classification finetuning'
    else:
        out.update(convert_segmenter(rest, grid, False, report, decoder=decoder))
        trainable = 'frozen (requires_grad=False) in the published PM-Segmenter finetuning'
    weight = sd.get(enc_prefix + 'patch_embed.proj.weight')
    patch = int(weight.shape[-1]) if weight is not None else 16
    report.note(f'{len(spans)} Prune-and-Merge units {spans} on a {grid[0]}x{grid[1]} grid '
                f'(crop {grid[0] * patch}x{grid[1] * patch}: the backbone img_size), dense '
                f'representation; M and R are {trainable}')
    return out


def pm_structure_from_state_dict(state_dict: Mapping[str, Tensor], prefix: str = 'backbone.',
                                 trainable: bool = True, num_prefix: int = 1) -> dict:
    """The ``pm_cfg`` and structure record of the dense units in a converted state dict.

    Same layout as :meth:`PruneMergeViT.structure_summary`: ``pm_cfg`` (``mode``, ``layers``,
    ``spans``, ``representation='dense'``, ``trainable``, ``restore_outputs=True``; pass it as
    the backbone's ``pm_cfg``), ``with_cls_token`` and ``units`` (span, representation, grid,
    N, K, merged and pruned counts, centers, assign).

    Args:
        state_dict (Mapping): with ``<prefix>pm.<a>.{span, grid_size, assign, centers,
            merge_matrix, restore_matrix, token_mask}``.
        prefix (str): prefix of the backbone keys. Default: ``'backbone.'``.
        trainable (bool): ``pm_cfg.trainable``. Default: True.
        num_prefix (int): P, prefix tokens in M and R. Default: 1.

    Raises:
        PMStructureError: no units, or an inconsistent unit.
    """
    starts = sorted({int(k[len(prefix + 'pm.'):].split('.', 1)[0]) for k in state_dict
                     if k.startswith(prefix + 'pm.')})
    if not starts:
        raise PMStructureError(f'no Prune-and-Merge units ({prefix}pm.<a>.*) in the state dict')
    units, spans = [], []
    for a in starts:
        u = f'{prefix}pm.{a}.'
        assign, centers = state_dict[u + 'assign'], state_dict[u + 'centers']
        m, r = state_dict[u + 'merge_matrix'], state_dict[u + 'restore_matrix']
        kept = torch.nonzero(assign >= 0).flatten()
        mw, rw = torch.zeros(assign.numel()), torch.zeros(assign.numel())
        mw[kept] = m[num_prefix + assign[kept], num_prefix + kept].float()
        rw[kept] = r[num_prefix + kept, num_prefix + assign[kept]].float()
        s = PMStructure(tuple(state_dict[u + 'grid_size'].tolist()), assign, centers, mw, rw)
        pm.validate_structure(s, where=f'unit {u}')
        span = [int(v) for v in state_dict[u + 'span'].tolist()]
        spans.append(tuple(span))
        units.append(dict(span=span, representation='dense', **s.summary()))
    layer_mode = all(a == b for a, b in spans)
    pm_cfg = dict(mode='layer' if layer_mode else 'span',
                  layers=[a for a, _ in spans] if layer_mode else None,
                  spans=spans, representation='dense', trainable=trainable,
                  restore_outputs=True)
    return dict(pm_cfg=pm_cfg, with_cls_token=True, units=units)


# --------------------------------------------------------------------------------------------
# init_cfg=dict(type='Pretrained') for PruneMergeViT
# --------------------------------------------------------------------------------------------
def _backbone_grid(backbone) -> Tuple[int, int]:
    h, w = backbone.img_size
    return h // backbone.patch_size, w // backbone.patch_size


def _fit_to_backbone(state: Dict[str, Tensor], backbone, report: ConversionReport,
                     path: str) -> Dict[str, Tensor]:
    """Resample pos_embed, drop what the config switched off (with a reason), and check that
    every key and shape fits; raises :class:`CheckpointMismatchError` otherwise."""
    own = backbone.state_dict()
    grid = _backbone_grid(backbone)
    state = OrderedDict(state)
    if 'pos_embed' in state and 'pos_embed' in own:
        pos = state['pos_embed']
        if pos.dim() == 3 and pos.shape[-1] == own['pos_embed'].shape[-1] \
                and tuple(pos.shape) != tuple(own['pos_embed'].shape):
            (gh, gw), prefix = _source_grid(int(pos.shape[1]), 1, None)
            if prefix != 1:
                raise CheckpointMismatchError(f'{path}: pos_embed {tuple(pos.shape)} has no '
                                              f'class-token row')
            state['pos_embed'] = resample_pos_embed(pos, grid, (gh, gw), 1)
            report.converted.setdefault(
                'pos_embed', f'resampled {gh}x{gw} -> {grid[0]}x{grid[1]} (timm '
                             f'resample_abs_pos_embed, bicubic)')
    switched_off = {
        'patch_embed.projection.bias': 'the backbone is built with patch_bias=False (as '
                                       'mmseg\'s Segmenter configs): the pretrained '
                                       'patch-embedding bias is not used; set patch_bias=True '
                                       'to keep it',
        'ln1.weight': 'the backbone is built with final_norm=False: the final norm is not used',
        'ln1.bias': 'the backbone is built with final_norm=False: the final norm is not used',
        'ln_pre.weight': 'the backbone is built with pre_norm=False: the pre-norm is not used',
        'ln_pre.bias': 'the backbone is built with pre_norm=False: the pre-norm is not used',
    }
    source_of = {v: k for k, v in report.renamed.items()}
    for key, why in switched_off.items():
        if key in state and key not in own:
            del state[key]
            src = source_of.get(key, source_of.get('backbone.' + key, key))
            report.renamed.pop(src, None)
            report.converted.pop(src, None)
            report.dropped[src] = why
    # Prune-and-Merge units re-shape themselves to the incoming structure (PruneMergeViT)
    has_units = hasattr(backbone, 'pm')
    is_pm = lambda k: has_units and k.startswith('pm.')  # noqa: E731
    unexpected = [k for k in state if k not in own and not is_pm(k)]
    missing = [k for k in own if k not in state and not is_pm(k)]
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state.items()
                  if k in own and not is_pm(k) and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        hint = ''
        if 'cls_token' in state and 'cls_token' in own \
                and state['cls_token'].shape[-1] != own['cls_token'].shape[-1]:
            hint = (f' The checkpoint has embed_dims={state["cls_token"].shape[-1]}, the model '
                    f'{own["cls_token"].shape[-1]} (e.g. ViT-B weights into a ViT-S config): '
                    f'use the weights of the configured architecture.')
        raise CheckpointMismatchError(
            f'{path} ({report.fmt}) does not fit the backbone: {len(mismatched)} shape '
            f'mismatch(es): {"; ".join(mismatched[:4])}.{hint}')
    if unexpected or missing:
        n_ckpt = len({k.split('.')[1] for k in state if k.startswith('layers.')})
        n_own = len(backbone.layers)
        hint = (f' The checkpoint has {n_ckpt} layers, the model {n_own}.'
                if n_ckpt != n_own else '')
        if 'ln1.weight' in missing:
            hint += (' The checkpoint has no final norm (e.g. a finetuned MAE that pools with '
                     'fc_norm): build the backbone with final_norm=False.')
        if any(k.startswith('pm.') for k in unexpected):
            hint += (' The checkpoint carries a Prune-and-Merge structure: use PruneMergeViT '
                     'with the pm_cfg it was compressed with.')
        raise CheckpointMismatchError(
            f'{path} ({report.fmt}) does not fit the backbone: '
            + (f'{len(missing)} missing key(s), e.g. {missing[:5]}; ' if missing else '')
            + (f'{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}; '
               if unexpected else '')
            + f'nothing is loaded.{hint}')
    return state


def load_pretrained_backbone(backbone, path: str) -> ConversionReport:
    """Load a local pretrained file into an mmseg-layout ViT backbone (``init_cfg`` /
    ``pretrained`` of :class:`PruneMergeViT`), strictly.

    The format is detected (:func:`detect_format`): mmseg backbone files and segmentor
    checkpoints (``backbone.*`` taken, heads dropped with a log line), timm ViT / DeiT /
    AugReg / MAE files (:func:`convert_timm_vit`), Segmenter checkpoints (the encoder,
    :func:`convert_segmenter`) and official Prune-and-Merge checkpoints
    (:func:`convert_pm_official`; the backbone needs the matching dense ``pm_cfg``). The
    ``pos_embed`` ``(1, 1 + H_src * W_src, C)`` is resampled to the backbone's grid
    ``img_size // patch_size`` with timm's ``resample_abs_pos_embed``. Only keys the
    converters know to be droppable (classification heads, a distillation token, the MAE
    decoder, and parts the config switched off: ``patch_bias=False``, ``final_norm=False``,
    ``pre_norm=False``) are dropped, each with a log line; anything else missing or unexpected
    raises.

    Args:
        backbone (nn.Module): mmseg ``VisionTransformer`` or :class:`PruneMergeViT`.
        path (str): local checkpoint file.

    Returns:
        ConversionReport: what happened to every source key (also logged).

    Raises:
        FileNotFoundError: missing file or a URL, with what to do.
        CheckpointFormatError: unknown key layout (lists the first keys and the supported
            formats), or keys no converter supports.
        CheckpointMismatchError: a shape mismatch (names the tensor and both shapes, e.g.
            ViT-B weights into a ViT-S config), or missing / unexpected keys.
        PMStructureError: Prune-and-Merge units that differ from the backbone's ``pm_cfg``.
    """
    from mmengine.logging import print_log
    sd, extras = read_checkpoint(path)
    fmt = detect_format(sd)
    report = ConversionReport(fmt=fmt)
    grid = _backbone_grid(backbone)
    if fmt == 'mmseg':
        state = OrderedDict(sd)
        report.renamed.update((k, k) for k in state)
    elif fmt in ('mmseg_segmentor', 'segmenter', 'pm_segmenter', 'pm_vit'):
        if fmt == 'segmenter':
            full = convert_segmenter(sd, grid, False, report, decoder=False)
        elif fmt in ('pm_segmenter', 'pm_vit'):
            full = convert_pm_official(dict(extras, model=sd), None, report, decoder=False)
        else:
            full = sd
        state = OrderedDict((k[len('backbone.'):], v) for k, v in full.items()
                            if k.startswith('backbone.'))
        for key in full:
            if not key.startswith('backbone.'):
                report.dropped[key] = 'not part of the backbone (decode / auxiliary head or ' \
                                      'another part of the segmentor)'
        if fmt == 'mmseg_segmentor':
            report.renamed.update((k, k[len('backbone.'):]) for k in full
                                  if k.startswith('backbone.'))
    else:  # timm
        state = convert_timm_vit(sd, grid, backbone.patch_size, report=report)
    state = _fit_to_backbone(state, backbone, report, path)
    backbone.load_state_dict(state, strict=True)
    print_log(f'loaded pretrained backbone weights from {path}:\n{report.summary()}',
              logger='current')
    return report


__all__ = ['FORMATS', 'CONVERTER_SCRIPTS', 'wrong_format_message', 'grid_from_img_size',
           'CheckpointFormatError', 'CheckpointMismatchError', 'ConversionReport',
           'unwrap_checkpoint', 'read_checkpoint', 'detect_format', 'resample_pos_embed',
           'describe_vit', 'convert_timm_vit', 'convert_segmenter', 'structure_from_dense',
           'convert_pm_official', 'pm_structure_from_state_dict', 'load_pretrained_backbone']
