"""ImageNet-style classifiers on a :class:`~mmseg_pm.models.backbones.TokenReductionViT`, built
from a timm ViT / DeiT, for classification-side checks of a token-reduction method (FLOPs,
throughput, logit parity with timm).

The classifier is the timm model's class-token head on the backbone's final class token:
``logits = head(LN(x_L)[:, 0])`` (timm ``VisionTransformer.forward_head`` with
``global_pool='token'``, no ``fc_norm``). The encoder weights go through
:func:`mmseg_pm.converters.timm.convert_timm_vit`; the backbone is built with timm's geometry and
LayerNorm epsilon (timm ViTs use ``eps=1e-6``; mmseg's ``LN`` default is ``1e-5``).

Source of the architecture: timm ``models/vision_transformer.py`` (``VisionTransformer``).
"""
import copy
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.backbones import TokenReductionViT
from .flops import gflops, trace_flops

CLASSIFIER_CONVENTION = ('one multiply-add = one FLOP; per image; mmengine.analysis on the '
                         'classifier forward (patch embedding, blocks, final norm, head), fused '
                         'attention counted as its two matmuls')


def timm_vit_backbone_cfg(timm_model: nn.Module) -> dict:
    """:class:`TokenReductionViT` arguments reproducing a timm ``VisionTransformer`` encoder.

    Args:
        timm_model (nn.Module): a timm ``VisionTransformer`` (e.g. ``deit_small_patch16_224``).

    Returns:
        dict: ``img_size`` (pixels), ``patch_size``, ``embed_dims``, ``num_layers``,
        ``num_heads``, ``mlp_ratio`` (int), ``qkv_bias``, ``patch_bias``, ``norm_cfg`` (timm's LN
        epsilon), ``with_cls_token``/``output_cls_token``/``final_norm`` True,
        ``out_indices=-1``, no dropout.

    Raises:
        ConfigError: a timm model the class-token classifier cannot reproduce (no class
            token, register / distillation tokens, another pooling, ``fc_norm``, pre-norm,
            class token without position embedding, non-square patches).
    """
    pe = getattr(timm_model, 'patch_embed', None)
    blocks = getattr(timm_model, 'blocks', None)
    if pe is None or blocks is None or getattr(timm_model, 'cls_token', None) is None:
        raise ConfigError(f'{type(timm_model).__name__}: not a timm VisionTransformer with a '
                          f'class token')
    problems = []
    if getattr(timm_model, 'global_pool', 'token') != 'token':
        problems.append(f'global_pool={timm_model.global_pool!r} (need the class token)')
    if getattr(timm_model, 'num_reg_tokens', 0) or getattr(timm_model, 'dist_token', None) \
            is not None:
        problems.append('register / distillation tokens')
    if not isinstance(getattr(timm_model, 'fc_norm', nn.Identity()), nn.Identity):
        problems.append('fc_norm')
    if not isinstance(getattr(timm_model, 'norm_pre', nn.Identity()), nn.Identity):
        problems.append('norm_pre')
    if getattr(timm_model, 'no_embed_class', False):
        problems.append('no_embed_class')
    patch = tuple(pe.patch_size)
    if patch[0] != patch[1]:
        problems.append(f'patch size {patch}')
    embed = int(timm_model.cls_token.shape[-1])
    hidden = int(blocks[0].mlp.fc1.out_features)
    if hidden % embed:  # mmseg's FFN width is the integer mlp_ratio * embed_dims
        problems.append(f'MLP width {hidden} not a multiple of {embed}')
    if problems:
        raise ConfigError(f'{type(timm_model).__name__}: cannot reproduce as a class-token '
                          f'classifier on TokenReductionViT: {", ".join(problems)}')
    first = blocks[0]
    return dict(
        img_size=tuple(int(v) for v in pe.img_size), patch_size=int(patch[0]),
        in_channels=int(pe.proj.in_channels), embed_dims=embed, num_layers=len(blocks),
        num_heads=int(first.attn.num_heads),
        mlp_ratio=hidden // embed,
        qkv_bias=first.attn.qkv.bias is not None, patch_bias=pe.proj.bias is not None,
        norm_cfg=dict(type='LN', eps=float(timm_model.norm.eps)),
        with_cls_token=True, output_cls_token=True, final_norm=True, out_indices=-1,
        drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)


class ViTClassifier(nn.Module):
    """A :class:`TokenReductionViT` (``output_cls_token=True``, ``final_norm=True``) and a linear
    head on its final class token.

    Args:
        backbone (TokenReductionViT): the encoder; its last output is ``[grid, cls]``.
        head (nn.Module): ``(B, C) -> (B, num_classes)`` (timm's ``head``).

    Raises:
        ConfigError: the backbone does not output its class token.
    """

    def __init__(self, backbone: TokenReductionViT, head: nn.Module):
        super().__init__()
        if not (backbone.with_cls_token and backbone.output_cls_token):
            raise ConfigError('ViTClassifier needs a backbone with with_cls_token=True and '
                              'output_cls_token=True')
        self.backbone = backbone
        self.head = head

    def forward(self, inputs: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, num_classes)`` logits."""
        return self.head(self.backbone(inputs)[-1][1])


def classifier_from_timm(timm_model: nn.Module,
                         token_reduction: Optional[dict] = None) -> ViTClassifier:
    """A :class:`ViTClassifier` with the weights of a timm ViT / DeiT (class-token head).

    The encoder is :func:`~mmseg_pm.converters.timm.convert_timm_vit` of ``timm_model``'s state
    dict, loaded strictly; a reducer's own parameters (e.g. MSTM's fusion) keep their
    initialisation (:meth:`TokenReducer.init_weights`). The head is a copy of ``timm_model.head``.

    Args:
        timm_model (nn.Module): a timm ``VisionTransformer`` (see :func:`timm_vit_backbone_cfg`).
        token_reduction (dict, optional): reducer config for the backbone (``dict(type='MSTM',
            keep_rate=0.7)``); None: dense.

    Returns:
        ViTClassifier: in eval mode, on ``timm_model``'s device.

    Raises:
        ConfigError: the converted encoder does not fit the backbone exactly (a key missing
            or unexpected besides the reducer's own parameters).
    """
    from ..converters.timm import convert_timm_vit
    cfg = timm_vit_backbone_cfg(timm_model)
    backbone = TokenReductionViT(token_reduction=token_reduction, **cfg)
    if backbone.reducer is not None:
        backbone.reducer.init_weights()
    state = convert_timm_vit(timm_model.state_dict())
    if backbone.reducer is not None:  # the reducer's own tensors keep their initialisation
        state.update({f'{backbone.reducer_attr}.{k}': v
                      for k, v in backbone.reducer.state_dict().items()})
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f'timm -> TokenReductionViT: {" ".join(str(e).split())[:300]}') \
            from None
    model = ViTClassifier(backbone, copy.deepcopy(timm_model.head))
    model.to(next(timm_model.parameters()).device)
    model.eval()
    return model


def count_classifier_flops(model: ViTClassifier, img_size: Sequence[int] = (224, 224)) -> Dict:
    """FLOPs of a :class:`ViTClassifier` for one image, both reduction-op conventions.

    ``mmengine.analysis.FlopAnalyzer`` on ``model`` (eval, ``torch.no_grad``) with
    ``aten::scaled_dot_product_attention`` counted by
    :func:`~mmseg_pm.analysis.flops.sdpa_flop_handle`; units: one multiply-add = one FLOP,
    FLOPs per image. The reducer's own cost (``reduction_flops`` of the token counts of the
    traced forward) gives the two totals: ``mr_counted = total + uncounted`` (every reduction
    op included) and ``mr_not_counted = total - counted`` (blocks, norms and head only).

    Args:
        model (ViTClassifier): the classifier.
        img_size (tuple[int, int]): ``(H, W)`` pixels of the random input.

    Returns:
        dict: ``convention``, ``input_shape`` ``[1, 3, H, W]``, ``flops`` ``{total, backbone,
        head}`` as counted, ``flops_mr_counted``, ``flops_mr_not_counted``, ``gflops_mr_counted``,
        ``gflops_mr_not_counted``, ``reduction`` ``{uncounted, counted}`` FLOPs, ``tokens``
        (sequence length entering each block, CLS included), ``params``, ``unsupported_ops``.
    """
    from mmengine.analysis import parameter_count

    backbone = model.backbone
    device = next(model.parameters()).device
    inputs = torch.randn(1, 3, int(img_size[0]), int(img_size[1]), device=device)
    total, by_module, unsupported = trace_flops(model, inputs)
    grid = (int(img_size[0]) // backbone.patch_size, int(img_size[1]) // backbone.patch_size)
    if backbone.is_reducing:
        tokens = list(backbone.last_token_counts)
        red = backbone.reducer.reduction_flops(tokens, backbone.out_indices)
    else:
        tokens = [1 + grid[0] * grid[1]] * len(backbone.layers)
        red = dict(uncounted=0, counted=0)
    counted = total + red['uncounted']
    not_counted = total - red['counted']
    params = parameter_count(model)
    return dict(
        convention=CLASSIFIER_CONVENTION, input_shape=list(inputs.shape),
        flops=dict(total=total, backbone=int(by_module.get('backbone', 0)),
                   head=int(by_module.get('head', 0))),
        flops_mr_counted=counted, flops_mr_not_counted=not_counted,
        gflops_mr_counted=gflops(counted), gflops_mr_not_counted=gflops(not_counted),
        reduction=dict(uncounted=int(red['uncounted']), counted=int(red['counted'])),
        tokens=tokens, params=int(params.get('', 0)), unsupported_ops=unsupported)


__all__ = ['CLASSIFIER_CONVENTION', 'timm_vit_backbone_cfg', 'ViTClassifier',
           'classifier_from_timm', 'count_classifier_flops']
