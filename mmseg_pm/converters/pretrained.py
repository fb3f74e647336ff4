"""``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` of the token-reduction backbones: any
supported local file (mmseg, timm, Segmenter, official Prune-and-Merge), converted and loaded
strictly."""
from collections import OrderedDict
from typing import Dict, Tuple

from mmengine.logging import print_log
from torch import Tensor, nn

from ..errors import CheckpointMismatchError, StructureError
from .fit import diff_state_dict, reducer_prefixes
from .formats import ConversionReport, detect_format, read_checkpoint
from .pm_official import convert_pm_official
from .segmenter import convert_segmenter
from .timm import convert_timm_vit, resample_pos_embed, source_grid

#: backbone keys a config can switch off, and why the checkpoint's tensor is then dropped
SWITCHED_OFF = {
    'patch_embed.projection.bias': 'the backbone is built with patch_bias=False (as mmseg\'s '
                                   'Segmenter configs): the pretrained patch-embedding bias is '
                                   'not used; set patch_bias=True to keep it',
    'ln1.weight': 'the backbone is built with final_norm=False: the final norm is not used',
    'ln1.bias': 'the backbone is built with final_norm=False: the final norm is not used',
    'ln_pre.weight': 'the backbone is built with pre_norm=False: the pre-norm is not used',
    'ln_pre.bias': 'the backbone is built with pre_norm=False: the pre-norm is not used',
}


def _backbone_grid(backbone: nn.Module) -> Tuple[int, int]:
    """Patch grid ``img_size // patch_size`` (as mmseg's ``VisionTransformer`` computes it)."""
    h, w = backbone.img_size
    return h // backbone.patch_size, w // backbone.patch_size


def _backbone_state(path: str, backbone: nn.Module,
                    report: ConversionReport) -> Dict[str, Tensor]:
    """Read ``path`` and convert it to backbone keys (no ``backbone.`` prefix)."""
    sd, extras = read_checkpoint(path)
    report.fmt = fmt = detect_format(sd)
    grid = _backbone_grid(backbone)
    if fmt == 'mmseg':
        report.renamed.update((k, k) for k in sd)
        return OrderedDict(sd)
    if fmt == 'timm':
        return convert_timm_vit(sd, grid, patch_size=backbone.patch_size, report=report)
    if fmt == 'segmenter':
        full = convert_segmenter(sd, grid, report=report, decoder=False)
    elif fmt in ('pm_segmenter', 'pm_vit'):
        full = convert_pm_official(dict(extras, model=sd), report=report, decoder=False)
    else:  # mmseg_segmentor
        full = sd
        report.renamed.update((k, k[len('backbone.'):]) for k in full
                              if k.startswith('backbone.'))
    for key in full:
        if not key.startswith('backbone.'):
            report.dropped[key] = ('not part of the backbone (decode / auxiliary head or '
                                   'another part of the segmentor)')
    return OrderedDict((k[len('backbone.'):], v) for k, v in full.items()
                       if k.startswith('backbone.'))


def _fit_pos_embed(state: Dict[str, Tensor], own: Dict[str, Tensor], grid: Tuple[int, int],
                   report: ConversionReport, path: str) -> None:
    """Resample a ``pos_embed`` ``(1, 1 + H_src * W_src, C)`` of another grid to ``grid``."""
    pos, target = state.get('pos_embed'), own.get('pos_embed')
    if pos is None or target is None or pos.dim() != 3 or pos.shape[-1] != target.shape[-1] \
            or tuple(pos.shape) == tuple(target.shape):
        return
    (gh, gw), prefix = source_grid(int(pos.shape[1]), 1)
    if prefix != 1:
        raise CheckpointMismatchError(f'{path}: pos_embed {tuple(pos.shape)} has no '
                                      f'class-token row')
    state['pos_embed'] = resample_pos_embed(pos, grid, old_grid=(gh, gw))
    report.converted.setdefault(
        'pos_embed', f'resampled {gh}x{gw} -> {grid[0]}x{grid[1]} (timm '
                     f'resample_abs_pos_embed, bicubic)')


def _drop_switched_off(state: Dict[str, Tensor], own: Dict[str, Tensor],
                       report: ConversionReport) -> None:
    """Drop what the config switched off (:data:`SWITCHED_OFF`), recorded under the source
    key."""
    source_of = {v: k for k, v in report.renamed.items()}
    for key, why in SWITCHED_OFF.items():
        if key in state and key not in own:
            del state[key]
            src = source_of.get(key, source_of.get('backbone.' + key, key))
            report.renamed.pop(src, None)
            report.converted.pop(src, None)
            report.dropped[src] = why


def _check_fits(state: Dict[str, Tensor], backbone: nn.Module, own: Dict[str, Tensor],
                report: ConversionReport, path: str) -> None:
    """Every key and shape must fit (reducer tensors load through the reducer's own checks)."""
    free = reducer_prefixes(backbone)
    if getattr(backbone, 'reducer_attr', None) == 'pm' and 'pm.' not in free:
        starts = sorted({int(k.split('.')[1]) for k in state if k.startswith('pm.')})
        if starts:  # a PruneMergeViT built without units
            raise StructureError(
                f'the checkpoint has Prune-and-Merge units starting at blocks {starts}, the '
                f'model has none: build the model with the pm_cfg the checkpoint was '
                f'compressed with')
    missing, unexpected, mismatched = diff_state_dict(own, state, free=free)
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


def load_pretrained_backbone(backbone: nn.Module, path: str) -> ConversionReport:
    """Load a local pretrained file into an mmseg-layout ViT backbone, strictly
    (``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` or ``pretrained=PATH`` of
    :class:`~mmseg_pm.models.TokenReductionViT` / :class:`~mmseg_pm.models.PruneMergeViT`).

    The format is detected (:func:`~mmseg_pm.converters.formats.detect_format`): mmseg backbone
    files and segmentor checkpoints (``backbone.*`` taken, heads dropped with a log line), timm
    ViT / DeiT / AugReg / MAE files (:func:`~mmseg_pm.converters.timm.convert_timm_vit`),
    rstrudel/segmenter checkpoints (the encoder,
    :func:`~mmseg_pm.converters.segmenter.convert_segmenter`) and official Prune-and-Merge
    checkpoints (:func:`~mmseg_pm.converters.pm_official.convert_pm_official`; the backbone
    needs the matching dense ``pm_cfg``). The ``pos_embed`` ``(1, 1 + H_src * W_src, C)`` is
    resampled to the backbone's grid ``img_size // patch_size`` with timm's
    ``resample_abs_pos_embed``. Only keys the converters know to be droppable (classification
    heads, a distillation token, the MAE decoder, and parts the config switched off:
    ``patch_bias=False``, ``final_norm=False``, ``pre_norm=False``) are dropped, each with a log
    line; anything else missing or unexpected raises.

    Args:
        backbone (nn.Module): mmseg ``VisionTransformer`` or a subclass
            (:class:`~mmseg_pm.models.PruneMergeViT`).
        path (str): local checkpoint file.

    Returns:
        ConversionReport: what happened to every source key (also logged).

    Raises:
        FileNotFoundError: missing file or a URL, with what to do.
        CheckpointFormatError: unknown key layout (lists the first keys and the supported
            formats), or keys no converter supports.
        CheckpointMismatchError: a shape mismatch (names the tensor and both shapes, e.g.
            ViT-B weights into a ViT-S config), or missing / unexpected keys.
        StructureError: Prune-and-Merge units that differ from the backbone's ``pm_cfg`` (or a
            backbone built without one).
    """
    report = ConversionReport()
    state = _backbone_state(path, backbone, report)
    own = backbone.state_dict()
    _fit_pos_embed(state, own, _backbone_grid(backbone), report, path)
    _drop_switched_off(state, own, report)
    _check_fits(state, backbone, own, report, path)
    backbone.load_state_dict(state, strict=True)
    print_log(f'loaded pretrained backbone weights from {path}:\n{report.summary()}',
              logger='current')
    return report


__all__ = ['SWITCHED_OFF', 'load_pretrained_backbone']
