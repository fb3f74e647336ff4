"""``PMTransformerEncoderLayer``: mmseg's ViT encoder layer that can expose its attention map."""
from typing import Callable, Optional

import torch.nn.functional as F
from mmseg.models.backbones.vit import TransformerEncoderLayer
from torch import Tensor


class PMTransformerEncoderLayer(TransformerEncoderLayer):
    """mmseg ``TransformerEncoderLayer`` for Prune-and-Merge backbones.

    Mao et al., "Prune and Merge: Efficient Token Compression for Vision Transformer with Spatial
    Information Preserved", IEEE TMM 2025 (arXiv 2503.23455).

    Modifications (parameters, names and the default forward are mmseg's):

    * the layer runs on any token count ``L`` (``P + N`` full or ``P + K`` merged tokens);
    * when :attr:`attn_hook` is set, the attention is computed explicitly and the post-softmax,
      pre-dropout attention map ``A`` of shape ``(B, H_h, L, L)`` (heads ``H_h``; query rows,
      key columns) is handed to the hook while still in the autograd graph, so a scoring pass
      can register a gradient hook on it (gradient-weighted attention, method.md §2). The
      explicit path is numerically equal to ``nn.MultiheadAttention`` (within float rounding);
      it is used only while scoring.

    Args: as mmseg's ``TransformerEncoderLayer``.
    """

    #: ``callable(attn: Tensor) -> None`` or None (default path)
    attn_hook: Optional[Callable[[Tensor], None]] = None

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (Tensor): ``(B, L, C)``. Returns: Tensor ``(B, L, C)``."""
        if self.attn_hook is None:
            return super().forward(x)
        x = self._explicit_attention(self.norm1(x), identity=x)
        return self.ffn(self.norm2(x), identity=x)

    def _explicit_attention(self, x: Tensor, identity: Tensor) -> Tensor:
        mha = self.attn.attn  # torch.nn.MultiheadAttention (mmcv wraps it)
        b, n, c = x.shape
        h = mha.num_heads
        qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // h)**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        self.attn_hook(attn)
        attn = F.dropout(attn, p=mha.dropout, training=self.training)
        out = mha.out_proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return identity + self.attn.dropout_layer(self.attn.proj_drop(out))
