"""EViT for dense prediction: keep the attentive tokens, fuse the rest, hold the dropped ones."""
from functools import partial
from typing import Optional, Sequence, Set

import torch
from mmseg.registry import MODELS
from torch import Tensor

from ...errors import ConfigError
from ...functional.common import restore_tokens
from ...functional.evit import evit_num_keep, evit_select
from ..layers.attention import AttentionTap
from .base import ReductionContext, TokenReducer

RESTORES = ('hold', 'fused_share')


def _restore_fused_share(z: Tensor, index: Tensor, num_prefix: int, shortcut: Tensor,
                         fused_slot: int, fused_start: Tensor) -> Tensor:
    """EViT restore ``'fused_share'``: a dropped token gets its held value plus the change the
    fused token went through after the drop, ``h_p + (f_out - f_drop)``."""
    y = restore_tokens(z, index, num_prefix, shortcut=shortcut)
    delta = z[:, num_prefix + fused_slot] - fused_start
    dropped = torch.cat([index.new_zeros(index.shape[0], num_prefix, dtype=torch.bool),
                         index < 0], dim=1)
    return y + dropped[..., None].to(y.dtype) * delta[:, None, :]


@MODELS.register_module()
class EViT(TokenReducer):
    """EViT (Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers
    via Token Reorganizations", ICLR 2022, arXiv 2202.07800) in a segmentation ViT.

    At each drop block, between the attention residual and the MLP, the ``ceil(keep_rate n)``
    patch tokens the CLS token attends to most (its attention row averaged over heads,
    computed from ``q_CLS`` and ``K`` without forming the whole map) are kept and the others
    fused into one token (:func:`mmseg_pm.functional.evit.evit_select`). For dense outputs the
    dropped positions are restored with their representation at the moment they were dropped
    (``restore='hold'``, the default) or that plus the fused token's later change
    (``'fused_share'``); the fused token itself has no grid position and is left out. Static.

    Args:
        keep_rate (float): in (0, 1]; 1 = identity. Default: 0.7.
        drop_blocks (list[int]): 0-based blocks. Default: (3, 6, 9) (EViT's ``drop_loc``).
        fuse (bool): fuse the inattentive tokens into one token. Default: True.
        restore (str): ``'hold'`` or ``'fused_share'``. Default: ``'hold'``.
        **kwargs: :class:`TokenReducer` arguments (set by the backbone).

    Raises:
        ConfigError: bad keep rate, blocks or restore mode; a backbone without CLS token.
    """
    label_keys = ('keep_rate', 'drop_blocks', 'fuse')
    needs_cls_token = True

    def __init__(self, keep_rate: float = 0.7, drop_blocks: Sequence[int] = (3, 6, 9),
                 fuse: bool = True, restore: str = 'hold', **kwargs):
        super().__init__(**kwargs)
        if not 0 < keep_rate <= 1:
            raise ConfigError(f'EViT keep_rate must be in (0, 1], got {keep_rate!r}')
        if any(not 0 <= int(b) < self.num_layers for b in drop_blocks):
            raise ConfigError(f'EViT drop_blocks {list(drop_blocks)} out of range for '
                              f'{self.num_layers} blocks')
        if restore not in RESTORES:
            raise ConfigError(f'EViT restore must be one of {RESTORES}, got {restore!r}')
        if restore == 'fused_share' and not fuse:
            raise ConfigError("EViT restore='fused_share' needs fuse=True")
        self.keep_rate = float(keep_rate)
        self.drop_blocks = sorted(int(b) for b in drop_blocks)
        self.fuse = bool(fuse)
        self.restore = restore

    @property
    def is_identity(self) -> bool:
        return self.keep_rate >= 1 or not self.drop_blocks

    @property
    def post_attn_blocks(self) -> Set[int]:
        return set(self.drop_blocks)

    def tap(self, block: int) -> Optional[AttentionTap]:
        return AttentionTap(cls_attn=True)

    def post_attn(self, block: int, x: Tensor, ctx: ReductionContext,
                  tap: Optional[AttentionTap]) -> Tensor:
        p = ctx.num_prefix
        red = evit_select(x, tap.cls_attention[:, p:], self.keep_rate, self.fuse, p)
        if red.x is x:  # nothing dropped
            return x
        if self.restore == 'fused_share':
            slot = red.x.shape[1] - p - 1
            restore = partial(_restore_fused_share, index=red.index, num_prefix=p, shortcut=x,
                              fused_slot=slot, fused_start=red.x[:, p + slot].detach())
        else:
            restore = partial(restore_tokens, index=red.index, num_prefix=p, shortcut=x)
        return ctx.apply(x, red, block, restore)

    def reduction_flops(self, token_counts: Sequence[int], out_indices: Sequence[int]) -> dict:
        """CLS row ``L C`` per drop (matmul, counted) and the fusion ``(n - k) C`` (not)."""
        counted = uncounted = 0
        for i in self.drop_blocks:
            n = token_counts[i] - self.num_prefix
            counted += token_counts[i] * self.embed_dims
            uncounted += (n - evit_num_keep(n, self.keep_rate)) * self.embed_dims
        return dict(uncounted=uncounted if self.fuse else 0, counted=counted)

    def summary(self) -> dict:
        return dict(super().summary(), keep_rate=self.keep_rate, drop_blocks=self.drop_blocks,
                    fuse=self.fuse, restore=self.restore)
