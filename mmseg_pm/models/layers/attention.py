"""Fused self-attention for mmseg's ViT layers, and the attention pieces token reducers need.

mmseg 1.x's ``TransformerEncoderLayer`` (backbone ``VisionTransformer`` and the Segmenter mask
head) attends through mmcv's ``MultiheadAttention``, which calls ``nn.MultiheadAttention`` with
``need_weights=True``: the explicit bmm-softmax-bmm path. :class:`FusedMultiheadAttention` runs
the same parameters through ``torch.nn.functional.scaled_dot_product_attention`` (one fused
kernel; outputs equal within float rounding, about 1e-6 in fp32) and, on request, hands a token
reducer the pieces it needs (:class:`AttentionTap`). The full attention map is formed only when
a caller asks for it (Prune-and-Merge's gradient-weighted scoring).
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn


@dataclass
class AttentionTap:
    """What one attention call exposes besides its output; the call fills in the results.

    Requests:
        mean_keys (bool): keys averaged over heads (ToMe's and MSTM's similarity metric).
        cls_attn (bool): the softmax attention row of the first (CLS) query, averaged over
            heads, CLS column included: ``softmax(q_0 K^T / sqrt(d) + bias)`` computed from
            ``q_0`` and ``K`` alone (``L * C`` multiply-adds), never the whole map (EViT's and
            MSTM's importance).
        attn_hook (callable, optional): receives the post-softmax, pre-dropout attention map
            ``(B, heads, L, L)`` while it is in the autograd graph (query rows, key columns);
            forces the explicit path (Prune-and-Merge scoring).

    Results (None until the call):
        keys (Tensor): ``(B, L, C / heads)``.
        cls_attention (Tensor): ``(B, L)``.
    """
    mean_keys: bool = False
    cls_attn: bool = False
    attn_hook: Optional[Callable[[Tensor], None]] = None
    keys: Optional[Tensor] = None
    cls_attention: Optional[Tensor] = None


def self_attention(attn: nn.MultiheadAttention, x: Tensor, bias: Optional[Tensor] = None,
                   tap: Optional[AttentionTap] = None, dropout_p: float = 0.0) -> Tensor:
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters, before the
    residual: ``out_proj(softmax(q k^T / sqrt(d) + bias) v)``.

    Fused through ``F.scaled_dot_product_attention`` unless ``tap.attn_hook`` asks for the map.

    Args:
        attn (nn.MultiheadAttention): packed ``in_proj_weight`` ``(3C, C)`` (q, k, v order),
            ``in_proj_bias`` ``(3C,)`` or None, ``out_proj``.
        x (Tensor): ``(B, L, C)``.
        bias (Tensor, optional): additive attention bias broadcastable to ``(B, heads, L, L)``,
            e.g. ``(B, 1, 1, L)`` = log of token sizes (proportional attention; ``-inf`` masks
            a padding key).
        tap (AttentionTap, optional): pieces to expose.
        dropout_p (float): attention dropout (training only).

    Returns:
        Tensor: ``(B, L, C)``.
    """
    b, n, c = x.shape
    h = attn.num_heads
    d = c // h
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L, d)
    if bias is not None:
        bias = bias.to(q.dtype)
    if tap is not None:
        if tap.mean_keys:
            tap.keys = k.mean(dim=1)
        if tap.cls_attn:
            logits = (q[:, :, :1] * d**-0.5) @ k.transpose(-2, -1)  # (B, heads, 1, L)
            if bias is not None:
                logits = logits + bias[..., :1, :]
            tap.cls_attention = logits.softmax(dim=-1).mean(dim=1)[:, 0]
    if tap is not None and tap.attn_hook is not None:
        weights = (q * d**-0.5) @ k.transpose(-2, -1)
        if bias is not None:
            weights = weights + bias
        weights = weights.softmax(dim=-1)
        tap.attn_hook(weights)
        out = F.dropout(weights, p=dropout_p, training=dropout_p > 0) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    out = out.transpose(1, 2).reshape(b, n, c)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


class FusedMultiheadAttention(BaseModule):
    """mmcv's ``MultiheadAttention`` (self-attention of mmseg's ViT layers) with fused attention.

    Takes over the children of an existing mmcv ``MultiheadAttention`` (``attn``:
    ``nn.MultiheadAttention``, ``proj_drop``, ``dropout_layer``), so parameter names and values,
    and with them every checkpoint, are unchanged: ``layer.attn = FusedMultiheadAttention(
    layer.attn)``.

    Modifications to mmcv's ``MultiheadAttention.forward``:

    * self-attention only (``key`` / ``value`` None or the query itself, no positional
      encodings, no masks: mmseg's ViT and Segmenter layers never pass them);
    * attention through :func:`self_attention` (``F.scaled_dot_product_attention``);
    * keyword-only ``attn_bias`` (additive bias, e.g. log token sizes) and ``tap``
      (:class:`AttentionTap`) for token reducers.

    Args:
        attention (mmcv.cnn.bricks.transformer.MultiheadAttention): built with
            ``batch_first=True``.

    Raises:
        ValueError: ``attention`` is not batch-first.
    """

    def __init__(self, attention: nn.Module):
        super().__init__(init_cfg=getattr(attention, 'init_cfg', None))
        if not attention.batch_first:
            raise ValueError('FusedMultiheadAttention needs a batch_first attention')
        self.embed_dims = attention.embed_dims
        self.num_heads = attention.num_heads
        self.batch_first = True
        self.attn = attention.attn
        self.proj_drop = attention.proj_drop
        self.dropout_layer = attention.dropout_layer

    def forward(self, query: Tensor, key: Optional[Tensor] = None,
                value: Optional[Tensor] = None, identity: Optional[Tensor] = None,
                query_pos=None, key_pos=None, attn_mask=None, key_padding_mask=None, *,
                attn_bias: Optional[Tensor] = None, tap: Optional[AttentionTap] = None,
                **kwargs) -> Tensor:
        """Args: query (Tensor): ``(B, L, C)``; identity (Tensor, optional): the residual
        (default: ``query``); attn_bias, tap: see :func:`self_attention`.

        Returns:
            Tensor: ``identity + dropout_layer(proj_drop(attention(query)))``, ``(B, L, C)``.

        Raises:
            NotImplementedError: cross-attention, positional encodings or masks.
        """
        if (key is not None and key is not query) or (value is not None and value is not key) \
                or query_pos is not None or key_pos is not None or attn_mask is not None \
                or key_padding_mask is not None:
            raise NotImplementedError('FusedMultiheadAttention is self-attention only')
        identity = query if identity is None else identity
        out = self_attention(self.attn, query, attn_bias, tap,
                             self.attn.dropout if self.training else 0.0)
        return identity + self.dropout_layer(self.proj_drop(out))


def fuse_attention(layers: nn.ModuleList) -> None:
    """Give every mmseg ``TransformerEncoderLayer`` in ``layers`` a
    :class:`FusedMultiheadAttention` (in place; parameters are shared, not copied)."""
    for layer in layers:
        if not isinstance(layer.attn, FusedMultiheadAttention):
            layer.attn = FusedMultiheadAttention(layer.attn)


def encoder_layer_forward(layer: nn.Module, x: Tensor, attn_bias: Optional[Tensor] = None,
                          tap: Optional[AttentionTap] = None,
                          between: Optional[Callable[[Tensor], Tensor]] = None,
                          out: Optional[Tensor] = None) -> Tensor:
    """mmseg ``TransformerEncoderLayer.forward`` with hook points for token reducers.

    ``x = x + Attn(LN1(x))``, then ``x = between(x)`` (a reduction between the attention
    residual and the MLP, as ToMe and EViT place it), then ``x = x + MLP(LN2(x))``.

    Args:
        layer (TransformerEncoderLayer): with a :class:`FusedMultiheadAttention`.
        x (Tensor): ``(B, L, C)``.
        attn_bias (Tensor, optional): see :func:`self_attention`.
        tap (AttentionTap, optional): attention pieces to expose (read them in ``between``).
        between (callable, optional): ``(B, L, C) -> (B, L', C)``.
        out (Tensor, optional): ``(B, L', C)`` to write the output into (the MLP residual
            sum goes there instead of a new tensor), e.g. the layer's own input when nothing
            reads it afterwards; inference only.

    Returns:
        Tensor: ``(B, L', C)`` (``out`` when given).
    """
    x = layer.attn(layer.norm1(x), identity=x, attn_bias=attn_bias, tap=tap)
    if between is not None:
        x = between(x)
    ffn = layer.ffn
    if out is None or not ffn.add_identity:
        return ffn(layer.norm2(x), identity=x)
    # mmcv FFN.forward with the residual sum written into ``out``
    return torch.add(x, ffn.dropout_layer(ffn.gamma2(ffn.layers(layer.norm2(x)))), out=out)


__all__ = ['AttentionTap', 'self_attention', 'FusedMultiheadAttention', 'fuse_attention',
           'encoder_layer_forward']
