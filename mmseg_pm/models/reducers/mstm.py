"""MSTM for dense prediction: multi-scale fusion, then non-crucial tokens merged into crucial ones.

Bian, Wang, Han, Wang, "Multi-Scale And Token Mergence: Make Your ViT More Efficient", arXiv
2306.04897. The paper's full text and code are not available: this is a reconstruction from
its abstract (multi-scale features fused before token pruning; non-crucial tokens, chosen by
importance scores, merged into crucial ones by similarity) with the standard building blocks
it names: EViT's CLS-attention importance, ToMe/TPS similarity merging, a CrossViT-style
coarse branch. Every ambiguity that changes the computation is an argument; the defaults are
the best readings (see the README's MSTM section).
"""
from functools import partial
from typing import Optional, Sequence, Set

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...errors import ConfigError
from ...functional.common import restore_tokens
from ...functional.mstm import MSTM_WEIGHTINGS, mstm_merge, mstm_num_keep
from ..layers.attention import AttentionTap
from .base import ReductionContext, TokenReducer

FUSIONS = ('add', 'pool', 'cross_attn', 'concat')
METRICS = ('keys', 'x')


class MultiScaleFusion(nn.Module):
    """Coarse (2x patch) features fused into the fine patch embeddings, before the position
    embedding and any reduction.

    * ``'add'`` (best reading): a coarse patch embedding (conv, kernel = stride = 2 * patch),
      nearest-upsampled x2 onto the fine grid, ``LN`` and a zero-initialised linear map, added:
      ``f <- f + LN(up(g)) W`` (``W = 0`` at initialisation: the model is exactly the ViT);
    * ``'pool'``: the same with a parameter-free coarse branch, 2x2 average pooling of ``f``;
    * ``'cross_attn'``: the fine tokens attend to the coarse ones (``heads`` heads), output
      projection zero-initialised: ``f <- f + Attn(LN(f), LN(g))``;
    * ``'concat'``: the coarse tokens (2x2-pooled fine tokens plus ``LN(g) W``, ``W = 0``) join
      the sequence before block 0 and are merged away by the first MSTM stage (see
      :class:`MSTM`); they have no grid position of their own.

    Args:
        mode (str): one of ``FUSIONS``.
        embed_dims (int): C.
        patch_size (int): fine patch size in pixels (coarse: twice it).
        in_channels (int): image channels.
        num_heads (int): heads of ``'cross_attn'``.
    """

    def __init__(self, mode: str, embed_dims: int, patch_size: int, in_channels: int,
                 num_heads: int):
        super().__init__()
        self.mode = mode
        self.coarse_patch = 2 * patch_size
        if mode != 'pool':
            self.coarse = nn.Conv2d(in_channels, embed_dims, self.coarse_patch,
                                    self.coarse_patch)
        self.norm = nn.LayerNorm(embed_dims)
        if mode == 'cross_attn':
            self.norm_q = nn.LayerNorm(embed_dims)
            self.attn = nn.MultiheadAttention(embed_dims, num_heads, batch_first=True)
        else:
            self.proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The documented initialisation: the fusion's output is 0 (zero output map)."""
        out = self.attn.out_proj if self.mode == 'cross_attn' else self.proj
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)

    def coarse_tokens(self, patches: Tensor, inputs: Tensor, grid) -> Tensor:
        """``(B, h2 * w2, C)`` coarse tokens on the ``ceil(H_g / 2) x ceil(W_g / 2)`` grid."""
        h, w = grid
        if self.mode == 'pool':
            fine = patches.transpose(1, 2).reshape(patches.shape[0], -1, h, w)
            return F.avg_pool2d(fine, 2, ceil_mode=True).flatten(2).transpose(1, 2)
        ph = -(-inputs.shape[-2] // self.coarse_patch) * self.coarse_patch - inputs.shape[-2]
        pw = -(-inputs.shape[-1] // self.coarse_patch) * self.coarse_patch - inputs.shape[-1]
        return self.coarse(F.pad(inputs, (0, pw, 0, ph))).flatten(2).transpose(1, 2)

    def forward(self, patches: Tensor, inputs: Tensor, grid) -> Tensor:
        """``(B, N, C)`` fine patch embeddings -> the fused ``(B, N, C)``, or for ``'concat'``
        the ``(B, N_c, C)`` extra coarse tokens."""
        b, n, c = patches.shape
        h, w = grid
        g = self.coarse_tokens(patches, inputs, grid)
        h2, w2 = -(-h // 2), -(-w // 2)
        if self.mode == 'cross_attn':
            q = self.norm_q(patches)
            kv = self.norm(g)
            return patches + self.attn(q, kv, kv, need_weights=False)[0]
        if self.mode == 'concat':
            fine = patches.transpose(1, 2).reshape(b, c, h, w)
            pooled = F.avg_pool2d(fine, 2, ceil_mode=True).flatten(2).transpose(1, 2)
            return pooled + self.proj(self.norm(g))
        up = g.transpose(1, 2).reshape(b, c, h2, w2)
        up = up.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[:, :, :h, :w]
        return patches + self.proj(self.norm(up.flatten(2).transpose(1, 2)))


@MODELS.register_module()
class MSTM(TokenReducer):
    """Multi-Scale And Token Mergence (Bian et al., arXiv 2306.04897; reconstructed, see the
    module docstring) in a segmentation ViT.

    At each reduction block, between the attention residual and the MLP, the
    ``ceil(keep_rate n)`` patch tokens with the highest importance (the CLS query's attention
    row averaged over heads, computed without forming the whole map) are crucial; every other
    token merges into its most similar crucial token (cosine on the block's keys averaged over
    heads, or on the token features) by a size-weighted average
    (:func:`mmseg_pm.functional.mstm.mstm_merge`); the CLS token is never merged. Sizes are
    tracked and proportional attention (``log(size)`` on the logits) is on by default. The full
    grid is restored for dense outputs by composing the merge maps and copying back. Static:
    the counts depend only on the crop (batches need no padding; ONNX export works).
    :class:`MultiScaleFusion` runs before the first reduction when ``fusion`` is set.

    Args:
        keep_rate (float): crucial fraction of the current count at every stage, in (0, 1];
            1 = no merging. Default: 0.7.
        reduce_blocks (list[int]): 0-based blocks. Default: (3, 6, 9).
        metric (str): similarity features, ``'keys'`` (head-mean keys, default) or ``'x'``.
        weighting (str): ``'size'`` (default), ``'mean'``, ``'importance'`` or ``'tps'``.
        proportional_attention (bool): add ``log(size)`` to the logits. Default: True.
        fusion (str | None): ``'add'``, ``'pool'``, ``'cross_attn'``, ``'concat'`` or None
            (no fusion parameters: the training-free setting). Default: None.
        **kwargs: :class:`TokenReducer` arguments (set by the backbone).

    Raises:
        ConfigError: bad settings, or a backbone without CLS token.
    """
    label_keys = ('keep_rate', 'reduce_blocks', 'fusion')
    needs_cls_token = True

    def __init__(self, keep_rate: float = 0.7, reduce_blocks: Sequence[int] = (3, 6, 9),
                 metric: str = 'keys', weighting: str = 'size',
                 proportional_attention: bool = True, fusion: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        if not 0 < keep_rate <= 1:
            raise ConfigError(f'MSTM keep_rate must be in (0, 1], got {keep_rate!r}')
        if any(not 0 <= int(b) < self.num_layers for b in reduce_blocks):
            raise ConfigError(f'MSTM reduce_blocks {list(reduce_blocks)} out of range for '
                              f'{self.num_layers} blocks')
        for name, value, options in (('metric', metric, METRICS),
                                     ('weighting', weighting, MSTM_WEIGHTINGS),
                                     ('fusion', fusion, FUSIONS + (None, ))):
            if value not in options:
                raise ConfigError(f'MSTM {name} must be one of {options}, got {value!r}')
        if fusion == 'concat' and not reduce_blocks:
            raise ConfigError("MSTM fusion='concat' needs a reduction block to merge the "
                              'coarse tokens away')
        self.keep_rate = float(keep_rate)
        self.reduce_blocks = sorted(int(b) for b in reduce_blocks)
        self.metric = metric
        self.weighting = weighting
        self.proportional_attention = bool(proportional_attention)
        self.fusion = (MultiScaleFusion(fusion, self.embed_dims, self.patch_size,
                                        self.in_channels, self.num_heads)
                       if fusion is not None else None)

    def init_weights(self) -> None:
        """Default initialisation of the coarse branch, then the fusion's zero output map."""
        super().init_weights()
        if self.fusion is not None:
            self.fusion.reset_parameters()

    @property
    def is_identity(self) -> bool:
        return (self.keep_rate >= 1 or not self.reduce_blocks) and self.fusion is None

    @property
    def post_attn_blocks(self) -> Set[int]:
        return set(self.reduce_blocks) if self.keep_rate < 1 else set()

    def tap(self, block: int) -> Optional[AttentionTap]:
        return AttentionTap(cls_attn=True, mean_keys=self.metric == 'keys')

    def on_embed(self, patches: Tensor, inputs: Tensor, ctx: ReductionContext) -> Tensor:
        if self.fusion is None:
            return patches
        fused = self.fusion(patches, inputs, ctx.grid)
        if self.fusion.mode == 'concat':
            ctx.extra['mstm_coarse'] = fused
            return patches
        return fused

    def pre_block(self, block: int, x: Tensor, ctx: ReductionContext) -> Tensor:
        coarse = ctx.extra.pop('mstm_coarse', None) if block == 0 else None
        if coarse is None:
            return x
        n = x.shape[1] - ctx.num_prefix
        index = torch.arange(n, device=x.device)  # fine patches keep their slots
        ctx.push(partial(restore_tokens, index=index, num_prefix=ctx.num_prefix), index, block)
        return torch.cat([x, coarse.to(x.dtype)], dim=1)

    def post_attn(self, block: int, x: Tensor, ctx: ReductionContext,
                  tap: Optional[AttentionTap]) -> Tensor:
        p = ctx.num_prefix
        metric = tap.keys[:, p:] if self.metric == 'keys' else x[:, p:]
        red = mstm_merge(x, tap.cls_attention[:, p:], metric, ctx.size, self.keep_rate, p,
                         self.weighting)
        return ctx.apply(x, red, block)

    def reduction_flops(self, token_counts: Sequence[int], out_indices: Sequence[int]) -> dict:
        """CLS row ``L C`` and similarity ``(n - K) K d`` per stage (matmuls, counted); the
        weighted merge ``n C`` (not counted). The fusion's layers are counted as model FLOPs."""
        d = self.embed_dims // self.num_heads if self.metric == 'keys' else self.embed_dims
        counted = uncounted = 0
        for i in self.post_attn_blocks:
            n = token_counts[i] - self.num_prefix
            k = mstm_num_keep(n, self.keep_rate)
            counted += token_counts[i] * self.embed_dims + (n - k) * k * d
            uncounted += n * self.embed_dims
        return dict(uncounted=uncounted, counted=counted)

    def summary(self) -> dict:
        return dict(super().summary(), keep_rate=self.keep_rate,
                    reduce_blocks=self.reduce_blocks, metric=self.metric,
                    weighting=self.weighting, proportional_attention=self.proportional_attention,
                    fusion=self.fusion.mode if self.fusion is not None else None)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """A checkpoint without the fusion's tensors (a stock ViT / Segmenter checkpoint) keeps
        the documented initialisation (zero output map) and loads strictly; one with only some
        of them is refused by the strict load."""
        if self.fusion is not None and not any(k.startswith(prefix) for k in state_dict):
            for key, value in self.fusion.state_dict().items():
                state_dict[f'{prefix}fusion.{key}'] = value
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


__all__ = ['MSTM', 'MultiScaleFusion', 'FUSIONS', 'METRICS']
