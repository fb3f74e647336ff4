"""Checkpoint key layouts: reading, unwrapping and recognising a checkpoint, and the report of a
conversion. Shared by every converter of :mod:`mmseg_pm.converters`.

Source layouts (:data:`FORMATS`):

* ``timm``: timm ``VisionTransformer`` classification checkpoints (AugReg
  ``vit_{tiny,small,base,large}_patch16_384``, DeiT ``deit_{tiny,small,base}_patch16_224`` and
  the ``_distilled`` variants, MAE ViT-B ``vit_base_patch16_224.mae`` and the MAE pretrain file
  with its decoder). Keys ``patch_embed.proj.*``, ``cls_token``, ``[dist_token]``,
  ``pos_embed``, ``blocks.<i>.{norm1, attn.qkv, attn.proj, [ls1.gamma], norm2, mlp.fc1,
  mlp.fc2, [ls2.gamma]}.*``, ``norm.*``, ``head.*`` (timm ``models/vision_transformer.py``).
* ``segmenter``: rstrudel/segmenter checkpoints (``{'model': state_dict, ...}``), keys
  ``encoder.<timm layout>`` and ``decoder.{proj_dec, cls_emb, blocks.<i>.*, decoder_norm,
  mask_norm, proj_patch, proj_classes}`` (``segm/model/decoder.py`` ``MaskTransformer``) or
  ``decoder.head.*`` (``DecoderLinear``).
* ``pm_vit``: official Prune-and-Merge classification checkpoints
  (NUST-Machine-Intelligence-Laboratory/prune_and_merge, ``pm-vit/tmvit.py``, models
  ``tmvit_*``): the timm layout plus, in each block's attention module,
  ``blocks.<i>.attn.{merge_matrix (K+1, N+1), recover_matrix (N+1, K+1), token_mask (N+1,),
  bias}``, and the top-level list ``channels`` (K_l + 1 per layer) the model is built with.
* ``pm_segmenter``: official PM-Segmenter checkpoints (wafev/PM-Segmenter, a fork of
  rstrudel/segmenter; ``segm/model/blocks.py``, ``segm/model/vit.py``): the Segmenter layout
  plus dense merge / recover matrices and token masks in the merge blocks (under ``attn.`` or
  directly in the block), and the top-level ``merged_tokens`` (K_l + 1 per layer),
  ``merge_list`` and ``recover_list``.
* ``mmseg`` / ``mmseg_segmentor``: already in mmseg's layout: a bare ``VisionTransformer``
  state dict (mmseg's converted pretrain files) or a segmentor checkpoint with ``backbone.*``
  keys, including compressed mmseg_pm checkpoints (``backbone.pm.<a>.*``).
"""
import os.path as osp
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ..errors import CheckpointFormatError

#: supported source layouts and what they look like (used in messages and reports)
FORMATS = OrderedDict(
    mmseg='mmseg VisionTransformer backbone keys (patch_embed.projection.*, layers.<i>.*, '
          'ln1.*), e.g. the pretrain files of mmseg\'s Segmenter configs or a converted timm '
          'checkpoint',
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
#: formats already in mmseg's key layout (nothing to convert)
MMSEG_FORMATS = ('mmseg', 'mmseg_segmentor')

#: official Prune-and-Merge tensors inside a block (pm-vit: under ``attn.``; PM-Segmenter: both)
PM_TENSOR_RE = re.compile(
    r'^(?P<pre>(?:encoder\.)?blocks\.(?P<blk>\d+)\.)(?P<attn>attn\.)?'
    r'(?P<name>merge_matrix|recover_matrix|token_mask|bias)$')


def wrong_format_message(src: str, fmt: str, expected: str,
                         converter: Optional[str] = None) -> str:
    """One line for a checkpoint ``src`` of format ``fmt`` given where ``expected`` was wanted.

    Args:
        src (str): how to name the checkpoint (its path).
        fmt (str): its detected format (a key of :data:`FORMATS`).
        expected (str): what was wanted, e.g. ``'timm'``.
        converter (str, optional): what converts ``fmt`` (the caller names its tool).

    Returns:
        str: e.g. ``'a.pth is a segmenter checkpoint (...), not timm: use <converter>'``.
    """
    if fmt in MMSEG_FORMATS:
        what = 'it is already in mmseg\'s key layout and needs no conversion'
    else:
        what = f'use {converter}' if converter else f'convert it as a {fmt} checkpoint'
    return f'{src} is a {fmt} checkpoint ({FORMATS[fmt]}), not {expected}: {what}'


@dataclass
class ConversionReport:
    """What a converter did with every source key: the summary the tools print and log.

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

    Follows ``state_dict`` (MMEngine, timm train scripts), ``model`` (DeiT, MAE,
    rstrudel/segmenter, the official Prune-and-Merge code) and ``module`` nesting, and strips a
    DDP ``module.`` prefix.

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
            raise CheckpointFormatError(
                f'no state dict found in the checkpoint (top-level keys {list(sd)[:10]}); '
                f'expected tensors at the top level or under "state_dict" / "model"')
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
    ``safetensors``; anything else with ``torch.load(weights_only=False)`` (the official
    checkpoints pickle ``argparse`` namespaces): only load files you trust.

    Args:
        path (str): local file.

    Returns:
        tuple[dict, dict]: as :func:`unwrap_checkpoint`.

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
# small readers shared by the converters
# --------------------------------------------------------------------------------------------
def patch_size_of(state_dict: Mapping[str, Tensor], prefix: str = '',
                  default: Optional[int] = 16) -> Optional[int]:
    """Patch size of a timm-layout encoder, read off its ``patch_embed.proj.weight``.

    Args:
        state_dict (Mapping): timm-layout keys (timm, Segmenter ``encoder.``, official PM).
        prefix (str): prefix of the encoder keys, e.g. ``'encoder.'``. Default: ``''``.
        default (int, optional): returned when there is no 4-D ``(C, 3, P, P)`` kernel (absent,
            or the flattened kernel of very old timm models). Default: 16.

    Returns:
        int | None: ``P`` (the kernel's width), or ``default``.
    """
    weight = state_dict.get(prefix + 'patch_embed.proj.weight')
    return int(weight.shape[-1]) if weight is not None and weight.dim() == 4 else default


def split_blocks(state_dict: Mapping[str, Tensor], prefix: str = 'blocks.'
                 ) -> Tuple[Dict[int, Dict[str, Tensor]], Dict[str, Tensor]]:
    """Group the keys of transformer blocks ``<prefix><i>.<name>`` by block.

    Used for timm / Segmenter encoders (``blocks.<i>.``) and the Segmenter mask-transformer
    decoder (``blocks.<i>.`` under ``decoder.``).

    Args:
        state_dict (Mapping): keys to split (order kept).
        prefix (str): block prefix before the index. Default: ``'blocks.'``.

    Returns:
        tuple[dict, dict]: ``{i: {name: tensor}}`` sorted by ``i``, and the other keys.
    """
    pattern = re.compile(rf'^{re.escape(prefix)}(\d+)\.(.+)$')
    blocks: Dict[int, Dict[str, Tensor]] = {}
    rest: Dict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        match = pattern.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), OrderedDict())[match.group(2)] = value
        else:
            rest[key] = value
    return dict(sorted(blocks.items())), rest


__all__ = ['FORMATS', 'MMSEG_FORMATS', 'PM_TENSOR_RE', 'wrong_format_message',
           'ConversionReport', 'unwrap_checkpoint', 'read_checkpoint', 'detect_format',
           'patch_size_of', 'split_blocks']
