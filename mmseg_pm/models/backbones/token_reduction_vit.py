"""``TokenReductionViT``: mmseg's VisionTransformer with fused attention and a token reducer."""
import contextlib
import time
from functools import partial
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from mmseg.models.backbones.vit import VisionTransformer
from mmseg.registry import MODELS
from torch import Tensor

from ...errors import ConfigError, FixedTokenCountError
from ...functional.common import patch_grid
from ..layers.attention import AttentionTap, encoder_layer_forward, fuse_attention
from ..reducers.base import ReductionContext, TokenReducer


class ReductionTimer:
    """Wall time spent in the token-reduction hooks of a backbone's forwards (seconds), for
    the benchmark's time share: set ``backbone.reduction_timer = ReductionTimer()``.

    Timed with ``time.perf_counter`` around every reducer hook and restore (the same places as
    the ``token_reduction`` profiler ranges), with ``torch.cuda.synchronize`` on GPU. A plain
    context manager (no generator), so the timer adds as little as possible to what it times;
    its regions do not nest.
    """

    def __init__(self, cuda: bool = False):
        self.seconds = 0.0
        self.cuda = cuda
        self._start = 0.0

    def __call__(self) -> 'ReductionTimer':
        return self

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._start
        return False


def reduction_range(timer: Optional[ReductionTimer] = None):
    """Around a reduction hook: the ``timer`` when one is set, a ``torch.profiler`` range named
    ``token_reduction`` while a profiler runs, else nothing (no cost, nothing traced)."""
    if timer is not None:
        return timer()
    if not torch.compiler.is_compiling() and torch.autograd._profiler_enabled():
        return torch.profiler.record_function('token_reduction')
    return contextlib.nullcontext()


class CompressedTokens:
    """An ``out_indices`` output taken while reduction steps are open, for
    ``TokenReconstructNeck`` (backbones built with ``restore_outputs=False``).

    Attributes:
        tokens (Tensor): ``(B, P + K, C)`` reduced tokens after the block.
    """

    def __init__(self, tokens: Tensor, restore: Callable[[Tensor], Tensor],
                 format_output: Callable[[Tensor], object]):
        self.tokens = tokens
        self._restore = restore
        self._format = format_output

    def restore(self):
        """Full-grid output, exactly as the backbone gives it with ``restore_outputs=True``:
        Tensor ``(B, C, H/16, W/16)`` (or ``[that, cls (B, C)]`` with ``output_cls_token``)."""
        return self._format(self._restore(self.tokens))


@MODELS.register_module()
class TokenReductionViT(VisionTransformer):
    """Vision Transformer with fused attention and a token-reduction method.

    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (arXiv 2010.11929), as
    mmseg's ``VisionTransformer``, with a token reducer from :mod:`mmseg_pm.models.reducers`
    (Prune-and-Merge, ToMe, EViT, ALGM, MSTM) chosen by config.

    Modifications to mmseg's ``VisionTransformer`` (its arguments, parameter names and
    outputs are unchanged, so mmseg ViT / Segmenter checkpoints load strictly):

    * every layer's attention is :class:`~mmseg_pm.models.layers.FusedMultiheadAttention`
      (``F.scaled_dot_product_attention``; outputs equal mmseg's within float rounding);
    * ``token_reduction`` builds a :class:`~mmseg_pm.models.reducers.TokenReducer` (state-dict
      keys under :attr:`reducer_attr`), called at its hook points of the forward; an identity
      reducer (``r=0``, ``keep_rate=1``, threshold off, identity structure) is skipped, so the
      backbone computes mmseg's forward;
    * outputs are always full grids ``(B, C, H/16, W/16)``: every ``out_indices`` output and
      the final one are restored through the open reduction steps (or handed as
      :class:`CompressedTokens` to ``TokenReconstructNeck`` with ``restore_outputs=False``);
      the final norm is applied after the restore;
    * a reducer with a fixed token count (:attr:`fixed_input_size`, Prune-and-Merge's static
      structure) gets inputs zero-padded at the bottom / right to its crop and the output grids
      cropped back; larger inputs raise :class:`~mmseg_pm.errors.FixedTokenCountError` (use
      slide inference with that crop);
    * ``attention_map_hooks`` (block -> callable) hand a block's attention map to a caller
      (Prune-and-Merge's gradient-weighted scoring).

    Args:
        token_reduction (dict, optional): reducer config, e.g. ``dict(type='ToMe', r=16)``;
            None: no reduction. The backbone supplies ``num_layers``, ``grid_size`` (of
            ``img_size``), ``num_prefix``, ``embed_dims``, ``num_heads``, ``patch_size`` and
            ``in_channels``.
        restore_outputs (bool): restore in-reduction ``out_indices`` outputs in the backbone
            (else ``TokenReconstructNeck`` does). Default: True.
        **kwargs: every argument of mmseg's ``VisionTransformer``.

    Raises:
        ConfigError: a config that is not a token reducer, or ``with_cp`` with a reducer that
            acts inside blocks.
    """
    #: attribute (and state-dict key) of the reducer
    reducer_attr = 'token_reduction'

    def __init__(self, token_reduction: Optional[dict] = None, restore_outputs: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        num_layers = len(self.layers)
        self.out_indices = [i % num_layers for i in self.out_indices]
        fuse_attention(self.layers)
        reducer = self.build_reducer(token_reduction) if token_reduction is not None else None
        if reducer is not None:
            self.add_module(self.reducer_attr, reducer)
        else:  # a plain attribute: reducer tensors in a checkpoint are then unexpected keys
            setattr(self, self.reducer_attr, None)
        self.restore_outputs = restore_outputs
        self.reduction_enabled = True
        self.attention_map_hooks: Dict[int, Callable[[Tensor], None]] = {}
        self.record_groups = False
        self.reduction_timer: Optional[ReductionTimer] = None
        self.last_token_counts = None
        self.last_groups = None
        self._freeze()

    def build_reducer(self, token_reduction: dict) -> TokenReducer:
        """Build a reducer from its config for this backbone (which supplies ``num_layers``,
        ``grid_size``, ``num_prefix``, ``embed_dims``, ``num_heads``, ``patch_size``,
        ``in_channels``); the backbone is not changed.

        Raises:
            ConfigError: not a token reducer, bad settings, or ``with_cp`` with a reducer that
                acts inside blocks.
        """
        reducer = MODELS.build(token_reduction, default_args=dict(
            num_layers=len(self.layers), grid_size=self.grid_size,
            num_prefix=int(self.with_cls_token), embed_dims=int(self.pos_embed.shape[-1]),
            num_heads=self.layers[0].attn.num_heads, patch_size=self.patch_size,
            in_channels=self.patch_embed.projection.in_channels))
        if not isinstance(reducer, TokenReducer):
            raise ConfigError(f'token_reduction must build a TokenReducer, got '
                              f'{type(reducer).__name__}')
        if reducer.post_attn_blocks and self.with_cp:
            raise ConfigError(f'with_cp (activation checkpointing) is not supported with '
                              f'{type(reducer).__name__}, which acts inside blocks')
        return reducer

    def replace_reducer(self, token_reduction: dict) -> TokenReducer:
        """Swap in a new reducer built from ``token_reduction`` (same device and mode as the
        backbone), e.g. to try another setting of a parameter-free method on the same
        weights. Only for a backbone that already has a reducer (its state-dict keys stay).

        Returns:
            TokenReducer: the new reducer.

        Raises:
            ConfigError: as :meth:`build_reducer`; a backbone built without a reducer.
        """
        if self.reducer is None:
            raise ConfigError('replace_reducer needs a backbone built with token_reduction')
        reducer = self.build_reducer(token_reduction)
        param = next(self.parameters(), None)
        if param is not None:
            reducer.to(param.device)
        reducer.train(self.training)
        self.add_module(self.reducer_attr, reducer)
        return reducer

    @property
    def reducer(self) -> Optional[TokenReducer]:
        """The token reducer (None without one)."""
        return getattr(self, self.reducer_attr)

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patch grid ``(H_g, W_g)`` of ``img_size`` (the training crop)."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def is_reducing(self) -> bool:
        """True when a reducer is present, enabled (:attr:`reduction_enabled`, switched off
        for a self-distillation teacher) and changes the computation."""
        return (self.reducer is not None and self.reduction_enabled
                and not self.reducer.is_identity)

    @property
    def fixed_input_size(self) -> Optional[Tuple[int, int]]:
        """``(H, W)`` in pixels every input must fit (padded up to it), or None when the
        token count follows the input size (no reducer, or one without a fixed grid)."""
        grid = self.reducer.fixed_grid if self.is_reducing else None
        return None if grid is None else (grid[0] * self.patch_size, grid[1] * self.patch_size)

    def init_weights(self):
        """mmseg's initialisation, then the reducer's own (e.g. a zero-initialised fusion);
        ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` (or ``pretrained=PATH``) loads
        a local mmseg / timm / Segmenter / official Prune-and-Merge file strictly through
        :func:`mmseg_pm.converters.pretrained.load_pretrained_backbone`."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            from ...converters.pretrained import load_pretrained_backbone
            if self.reducer is not None:
                self.reducer.init_weights()
            load_pretrained_backbone(self, self.init_cfg['checkpoint'])
        else:
            super().init_weights()
            if self.reducer is not None:
                self.reducer.init_weights()

    # ---------------------------------------------------------------------------------------
    def _format_output(self, x: Tensor, hw_shape, crop):
        """(B, P + N, C) tokens -> mmseg output (B, C, h, w) [, cls], cropped to ``crop``."""
        out = x[:, 1:] if self.with_cls_token else x
        b, _, c = out.shape
        out = out.reshape(b, hw_shape[0], hw_shape[1], c).permute(0, 3, 1, 2)
        if tuple(crop) != tuple(hw_shape):
            out = out[:, :, :crop[0], :crop[1]]
        out = out.contiguous()
        if self.output_cls_token:
            out = [out, x[:, 0]]
        return out

    def _pad_to(self, inputs: Tensor, grid: Tuple[int, int]):
        """Zero-pad ``(B, 3, H, W)`` to ``grid`` patches; returns (inputs, output grid).

        Raises:
            FixedTokenCountError: the input needs more patches than ``grid``.
        """
        h, w = inputs.shape[-2:]
        ps = self.patch_size
        out_grid = patch_grid((h, w), ps)
        if out_grid[0] > grid[0] or out_grid[1] > grid[1]:
            ch, cw = grid[0] * ps, grid[1] * ps
            raise FixedTokenCountError(
                f'input {h}x{w} is larger than the {ch}x{cw} crop this model\'s token count is '
                f'fixed for; use slide inference with that crop: test_cfg=dict(mode="slide", '
                f'crop_size=({ch}, {cw}), stride=...)')
        if out_grid != tuple(grid):
            inputs = F.pad(inputs, (0, grid[1] * ps - w, 0, grid[0] * ps - h))
        return inputs, out_grid

    def _embed(self, inputs: Tensor, reducer: Optional[TokenReducer]):
        """mmseg's embedding (patches, CLS, position, pre-norm) with the reducer's
        :meth:`~TokenReducer.on_embed` applied to the patch embeddings.

        Returns:
            tuple: tokens ``(B, P + N, C)``, ``hw_shape`` and the new :class:`ReductionContext`.
        """
        x, hw_shape = self.patch_embed(inputs)
        ctx = ReductionContext(int(self.with_cls_token), hw_shape, self.record_groups)
        if reducer is not None:
            x = reducer.on_embed(x, inputs, ctx)
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        x = self._pos_embeding(torch.cat((cls_tokens, x), dim=1), hw_shape, self.pos_embed)
        if not self.with_cls_token:
            x = x[:, 1:]
        if self.pre_norm:
            x = self.pre_ln(x)
        return x, hw_shape, ctx

    def forward(self, inputs: Tensor):
        """Args: inputs (Tensor): ``(B, 3, H, W)``.

        Returns:
            tuple: one entry per ``out_indices``: Tensor ``(B, C, ceil(H/16), ceil(W/16))``
            (``[that, cls (B, C)]`` with ``output_cls_token``), or :class:`CompressedTokens`
            with ``restore_outputs=False``.

        Raises:
            FixedTokenCountError: an input larger than a fixed-token-count reducer's crop.
        """
        reducer = self.reducer if self.is_reducing else None
        if reducer is None and not self.attention_map_hooks:
            return super().forward(inputs)
        grid = reducer.fixed_grid if reducer is not None else None
        out_grid = None
        if grid is not None:
            inputs, out_grid = self._pad_to(inputs, grid)
        x, hw_shape, ctx = self._embed(inputs, reducer)
        fmt = partial(self._format_output, hw_shape=hw_shape, crop=out_grid or hw_shape)
        outs = [fmt(x)] if self.out_origin else []
        post_attn = reducer.post_attn_blocks if reducer is not None else set()
        proportional = reducer is not None and reducer.proportional_attention
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if reducer is not None:
                with reduction_range(self.reduction_timer):
                    x = reducer.pre_block(i, x, ctx)
            ctx.token_counts.append(int(x.shape[1]))
            tap = reducer.tap(i) if i in post_attn else None
            hook = self.attention_map_hooks.get(i)
            if hook is not None:
                tap = tap or AttentionTap()
                tap.attn_hook = hook
            bias = ctx.attention_bias(proportional)
            buffer, ctx.output_buffer = ctx.output_buffer, None
            if tap is None and bias is None and i not in post_attn and buffer is None:
                x = layer(x)
            else:
                between = (partial(_in_range, self.reduction_timer, reducer.post_attn, i, ctx=ctx,
                                   tap=tap)
                           if i in post_attn else None)
                x = encoder_layer_forward(layer, x, bias, tap, between, out=buffer)
            if reducer is not None:
                with reduction_range(self.reduction_timer):
                    x = reducer.post_block(i, x, ctx)
            if i == last:
                with reduction_range(self.reduction_timer):
                    x = ctx.restore(x)
                if self.final_norm:
                    x = self.norm1(x)
            if i in self.out_indices:
                if i == last or not ctx.restores:
                    outs.append(fmt(x))
                elif self.restore_outputs:
                    with reduction_range(self.reduction_timer):
                        outs.append(fmt(ctx.restore(x)))
                else:
                    outs.append(CompressedTokens(x, ctx.snapshot(), fmt))
        self.last_token_counts = ctx.token_counts
        self.last_groups = ctx.groups
        return tuple(outs)


def _in_range(timer, hook, *args, **kwargs):
    with reduction_range(timer):
        return hook(*args, **kwargs)


def reduction_backbone(model) -> Optional[TokenReductionViT]:
    """The :class:`TokenReductionViT` (or ``PruneMergeViT``) backbone of a segmentor, looking
    through DDP / test-time-augmentation wrappers (``.module``); None when there is none."""
    while hasattr(model, 'module'):
        model = model.module
    backbone = getattr(model, 'backbone', None)
    return backbone if isinstance(backbone, TokenReductionViT) else None


__all__ = ['TokenReductionViT', 'CompressedTokens', 'ReductionTimer', 'reduction_backbone']
