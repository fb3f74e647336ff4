"""rstrudel/segmenter checkpoints -> mmseg ``EncoderDecoder`` keys.

Source: rstrudel/segmenter (Strudel et al., "Segmenter: Transformer for Semantic Segmentation",
ICCV 2021): ``segm/model/vit.py`` (the timm-layout encoder), ``segm/model/decoder.py``
(``MaskTransformer``: ``proj_dec``, ``cls_emb``, ``blocks``, ``decoder_norm``, ``mask_norm``,
``proj_patch`` / ``proj_classes`` applied as ``x @ P``; ``DecoderLinear``: ``head``). Target:
mmseg's ``VisionTransformer`` and ``SegmenterMaskTransformerHead`` / ``FCNHead``.
"""
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

from torch import Tensor

from ..errors import CheckpointFormatError
from .formats import ConversionReport, split_blocks, unwrap_checkpoint
from .timm import convert_blocks, convert_vit_encoder, describe_vit

#: mask-transformer decoder keys renamed as they are
MASK_DECODER_KEYS = {
    'proj_dec.weight': 'dec_proj.weight', 'proj_dec.bias': 'dec_proj.bias',
    'cls_emb': 'cls_emb', 'decoder_norm.weight': 'decoder_norm.weight',
    'decoder_norm.bias': 'decoder_norm.bias', 'mask_norm.weight': 'mask_norm.weight',
    'mask_norm.bias': 'mask_norm.bias',
}
#: the ``(D, D)`` parameters applied as ``x @ P``, and their ``nn.Linear`` in mmseg's head
MASK_DECODER_PROJ = {'proj_patch': 'patch_proj', 'proj_classes': 'classes_proj'}


def _convert_mask_decoder(dec: Mapping[str, Tensor], report: ConversionReport,
                          out: Dict[str, Tensor], src: str, dst: str) -> None:
    blocks, rest = split_blocks(dec)
    unknown = []
    for key, value in rest.items():
        if key in MASK_DECODER_KEYS:
            out[dst + MASK_DECODER_KEYS[key]] = value
            report.renamed[src + key] = dst + MASK_DECODER_KEYS[key]
        elif key in MASK_DECODER_PROJ:
            name = MASK_DECODER_PROJ[key]
            # Segmenter computes x @ P, nn.Linear x @ W^T: W = P^T
            out[f'{dst}{name}.weight'] = value.t().contiguous()
            report.converted[src + key] = f'transposed into {dst}{name}.weight (x @ P)'
        else:
            unknown.append(src + key)
    unknown += convert_blocks(blocks, src=src, dst=dst, report=report, out=out)
    if unknown:
        raise CheckpointFormatError(f'unsupported Segmenter decoder keys: {unknown[:10]}')
    d_model, n_cls = int(dec['cls_emb'].shape[-1]), int(dec['cls_emb'].shape[1])
    c_enc = int(dec['proj_dec.weight'].shape[1]) if 'proj_dec.weight' in dec else '?'
    report.note(f'decode head: SegmenterMaskTransformerHead(in_channels={c_enc}, '
                f'channels={d_model}, embed_dims={d_model}, num_layers={len(blocks)}, '
                f'num_classes={n_cls}); num_heads is not stored in the weights (Segmenter '
                f'uses embed_dims // 64)')


def _convert_linear_decoder(dec: Mapping[str, Tensor], report: ConversionReport,
                            out: Dict[str, Tensor], src: str, dst: str) -> None:
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


def convert_segmenter(checkpoint: Mapping, grid_size: Optional[Sequence[int]] = None, *,
                      drop_dist_token: bool = False,
                      report: Optional[ConversionReport] = None,
                      decoder: bool = True) -> Dict[str, Tensor]:
    """Official rstrudel/segmenter checkpoint -> mmseg ``EncoderDecoder`` state dict.

    ``encoder.*`` (timm layout, see :func:`~mmseg_pm.converters.timm.convert_timm_vit`) becomes
    ``backbone.*`` of mmseg's ``VisionTransformer`` (``final_norm=True``; the encoder's
    ImageNet ``head`` is dropped); the mask-transformer decoder becomes ``decode_head.*`` of
    ``SegmenterMaskTransformerHead``: ``proj_dec`` -> ``dec_proj``, ``cls_emb``
    ``(1, n_cls, D)``, ``blocks.<i>`` -> ``layers.<i>``, ``decoder_norm``, ``mask_norm``, and
    the ``(D, D)`` parameters ``proj_patch`` / ``proj_classes`` (applied as ``x @ P``)
    transposed into ``patch_proj.weight`` / ``classes_proj.weight`` (``nn.Linear``). The
    linear decoder ``decoder.head`` ``(n_cls, C)`` becomes an ``FCNHead`` ``conv_seg``
    ``(n_cls, C, 1, 1)``.

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
    out = convert_vit_encoder(enc, src='encoder.', dst='backbone.', report=report,
                              grid_size=grid_size, drop_dist_token=drop_dist_token,
                              dist_hint=' Pass drop_dist_token=True (--drop-dist-token) to '
                                        'convert anyway.')
    if dec and not decoder:
        for key in dec:
            report.dropped['decoder.' + key] = 'Segmenter decoder, not part of the backbone'
    elif 'cls_emb' in dec:
        _convert_mask_decoder(dec, report, out, 'decoder.', 'decode_head.')
    elif 'head.weight' in dec:
        _convert_linear_decoder(dec, report, out, 'decoder.', 'decode_head.')
    elif dec:
        raise CheckpointFormatError(
            f'unknown Segmenter decoder (keys {list(dec)[:8]}): expected the mask transformer '
            f'(decoder.cls_emb, ...) or the linear decoder (decoder.head.*)')
    else:
        report.note('no decoder.* keys: only the encoder was converted')
    report.note('rstrudel/segmenter uses LayerNorm eps 1e-5 (PyTorch default); mmseg\'s '
                'Segmenter configs use eps 1e-6 in the backbone: set norm_cfg=dict(type="LN", '
                'eps=1e-5) to reproduce the official model exactly')
    return out


__all__ = ['MASK_DECODER_KEYS', 'MASK_DECODER_PROJ', 'convert_segmenter']
