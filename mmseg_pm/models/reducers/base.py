"""The token-reducer interface shared by every method, and the per-forward reduction state."""
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
from mmengine.model import BaseModule
from torch import Tensor

from ...errors import ConfigError
from ...functional.common import Reduction, compose_index, restore_tokens
from ..layers.attention import AttentionTap


class ReductionContext:
    """Per-forward state of a token-reduction backbone: what it takes to give the grid back.

    Created by the backbone for every forward and handed to the reducer's hooks.

    Attributes:
        num_prefix (int): P, prefix (CLS) tokens, never reduced.
        grid (tuple[int, int]): patch grid ``(H_g, W_g)`` of this forward; ``N = H_g * W_g``.
        size (Tensor | None): ``(B, L)`` float, original patches per current token (prefix 1,
            padding 0); None while every token is one patch.
        restores (list[callable]): one per open reduction step, innermost last; each maps the
            tokens after the step back to the tokens before it.
        sources (list[Tensor]): while recording groups, the composed patch map before each
            open step; ``source`` is the current one.
        source (Tensor | None): while recording groups, LongTensor ``(N,)`` (shared by the
            batch) or ``(B, N)``: the current token slot (among the patch tokens) of each
            original patch, ``-1`` if it was dropped; None while unreduced (or not recording).
        token_counts (list[int]): sequence length entering every block (``P + K``; with
            per-image counts, the padded length), for summaries.
        groups (list | None): when a list, every step appends ``(block, source)`` (for
            pictures of the token groups).
        extra (dict): what a reducer hands from one of its hooks to a later one.
        output_buffer (Tensor | None): set by a reducer's :meth:`~TokenReducer.pre_block`:
            the ``(B, L, C)`` tensor the block writes its output into (its own input, when the
            reducer made it and nothing reads it afterwards; inference only). The backbone
            takes it for that block and clears it.
    """

    def __init__(self, num_prefix: int, grid: Tuple[int, int], record_groups: bool = False):
        self.num_prefix = num_prefix
        self.grid = tuple(grid)
        self.size: Optional[Tensor] = None
        self.restores: List[Callable[[Tensor], Tensor]] = []
        self.sources: List[Optional[Tensor]] = []
        self.source: Optional[Tensor] = None
        self.token_counts: List[int] = []
        self.groups: Optional[list] = [] if record_groups else None
        self.extra: dict = {}
        self.output_buffer: Optional[Tensor] = None
        self._bias_key = None
        self._bias = None

    @property
    def num_tokens(self) -> int:
        """N, the original number of patch tokens."""
        return self.grid[0] * self.grid[1]

    def push(self, restore: Callable[[Tensor], Tensor], index: Tensor, block: int) -> None:
        """Open a reduction step.

        Args:
            restore (callable): ``(B, P + K, C) -> (B, P + n, C)``, undoes this step.
            index (Tensor): LongTensor ``(n,)`` or ``(B, n)``: the slot after the step of each
                patch token before it (``-1``: dropped).
            block (int): the block the step belongs to (for the group record).
        """
        self.restores.append(restore)
        if self.groups is not None:
            self.sources.append(self.source)
            self.source = index if self.source is None else compose_index(self.source, index)
            self.groups.append((block, self.source.detach().clone()))

    def apply(self, x: Tensor, red: Reduction, block: int,
              restore: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
        """Adopt the :class:`~mmseg_pm.functional.common.Reduction` ``red`` of ``x``: open its
        step (``restore`` or, by default, unmerging by copy through ``red.index``), take its
        sizes, and return the reduced tokens (``x`` itself when nothing was reduced)."""
        if red.x is x:
            return x
        if restore is None:
            restore = partial(restore_tokens, index=red.index, num_prefix=self.num_prefix)
        self.push(restore, red.index, block)
        if red.size is not None:
            self.size = red.size
        return red.x

    def pop(self, x: Tensor) -> Tensor:
        """Close the innermost step: undo it on ``x`` and return the longer sequence."""
        restore = self.restores.pop()
        if self.groups is not None:
            self.source = self.sources.pop()
        return restore(x)

    def drop(self) -> None:
        """Close the innermost step without undoing it: the next step takes its reduced tokens
        as they are and restores through it (Prune-and-Merge units in consecutive blocks)."""
        self.restores.pop()
        if self.groups is not None:
            self.source = self.sources.pop()

    def restore(self, x: Tensor) -> Tensor:
        """Undo every open step on ``x`` without closing them: ``(B, P + N, C)``."""
        for restore in reversed(self.restores):
            x = restore(x)
        return x

    def snapshot(self) -> Callable[[Tensor], Tensor]:
        """:meth:`restore` for the steps open now (for outputs restored later, by a neck)."""
        steps = list(self.restores)

        def restore(x: Tensor) -> Tensor:
            for step in reversed(steps):
                x = step(x)
            return x
        return restore

    def attention_bias(self, proportional: bool) -> Optional[Tensor]:
        """Additive attention bias ``(B, 1, 1, L)`` for the current tokens, or None.

        ``log(size)`` with proportional attention (ToMe: a token standing for s patches
        counts as s keys; Bolya et al., ICLR 2023, arXiv 2210.09461, §3); otherwise ``-inf``
        only on padding keys (size 0), None without padding.
        """
        if self.size is None:
            return None
        key = (id(self.size), proportional)
        if key != self._bias_key:
            if proportional:
                bias = self.size.log()
            else:
                padding = self.size == 0
                bias = (torch.zeros_like(self.size).masked_fill(padding, float('-inf'))
                        if bool(padding.any()) else None)
            self._bias = None if bias is None else bias[:, None, None, :]
            self._bias_key = key
        return self._bias


class TokenReducer(BaseModule):
    """Base of a token-reduction method hosted by ``TokenReductionViT``.

    The backbone calls the hooks at fixed points of every forward; each hook may shorten the
    sequence and must :meth:`ReductionContext.push` a restore for what it removed, so every
    ``out_indices`` output and the final output come back as the full ``H/16 x W/16`` grid:

    * :meth:`on_embed`: the patch embeddings ``(B, N, C)`` before the position embedding
      (multi-scale fusion);
    * :meth:`pre_block`: before block ``i`` (Prune-and-Merge's merge matrix M);
    * :meth:`post_attn`: inside block ``i``, between the attention residual and the MLP
      (ToMe, EViT, ALGM, MSTM), given the :class:`AttentionTap` of :meth:`tap`;
    * :meth:`post_block`: after block ``i`` (Prune-and-Merge's reconstruct matrix R).

    Subclasses set :attr:`static` (the token count depends only on the crop: batches need no
    padding and ONNX export works), :attr:`proportional_attention`, and report what the FLOP
    counter cannot see (:meth:`uncounted_flops`), a JSON :meth:`summary` and whether they
    change anything (:attr:`is_identity`: an identity reducer is skipped, so the backbone is
    exactly mmseg's ``VisionTransformer``).

    Args (filled in by the backbone):
        num_layers (int): blocks of the backbone.
        grid_size (tuple[int, int]): patch grid of the backbone's ``img_size``.
        num_prefix (int): P.
        embed_dims (int): C.
        num_heads (int): attention heads.
        patch_size (int): pixels per patch side.
        in_channels (int): image channels.
        init_cfg (dict, optional): mmengine init config.
    """
    static = True
    proportional_attention = False
    needs_cls_token = False
    #: :meth:`summary` keys that :meth:`settings_label` shows
    label_keys: Tuple[str, ...] = ()

    def __init__(self, num_layers: int, grid_size: Sequence[int], num_prefix: int = 1,
                 embed_dims: int = 768, num_heads: int = 12, patch_size: int = 16,
                 in_channels: int = 3, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.num_layers = int(num_layers)
        self.grid_size = tuple(int(v) for v in grid_size)
        self.num_prefix = int(num_prefix)
        self.embed_dims = int(embed_dims)
        self.num_heads = int(num_heads)
        self.patch_size = int(patch_size)
        self.in_channels = int(in_channels)
        if self.needs_cls_token and self.num_prefix != 1:
            raise ConfigError(f'{type(self).__name__} scores tokens by the CLS token\'s '
                              f'attention: build the backbone with with_cls_token=True')

    # -- what the backbone asks ---------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        """True when the reducer changes nothing (it is then skipped)."""
        return False

    @property
    def fixed_grid(self) -> Optional[Tuple[int, int]]:
        """The patch grid every input must have (a structure built for one crop), or None."""
        return None

    @property
    def post_attn_blocks(self) -> Set[int]:
        """Blocks whose :meth:`post_attn` acts."""
        return set()

    def tap(self, block: int) -> Optional[AttentionTap]:
        """The attention pieces :meth:`post_attn` of ``block`` needs (a new tap), or None."""
        return None

    # -- hooks (identity by default) ----------------------------------------------------------
    def on_embed(self, patches: Tensor, inputs: Tensor, ctx: ReductionContext) -> Tensor:
        """``(B, N, C)`` patch embeddings of ``inputs`` ``(B, 3, H, W)``, before the position
        embedding."""
        return patches

    def pre_block(self, block: int, x: Tensor, ctx: ReductionContext) -> Tensor:
        """Before block ``block``: ``(B, L, C)`` tokens in, ``(B, L', C)`` out (``L' <= L``;
        a shortening pushes its restore on ``ctx``)."""
        return x

    def post_attn(self, block: int, x: Tensor, ctx: ReductionContext,
                  tap: Optional[AttentionTap]) -> Tensor:
        """Inside block ``block``, after the attention residual: ``(B, L, C)`` in, ``(B, L', C)``
        out, given the block's :class:`AttentionTap` (only for :attr:`post_attn_blocks`)."""
        return x

    def post_block(self, block: int, x: Tensor, ctx: ReductionContext) -> Tensor:
        """After block ``block``: ``(B, L, C)`` in, ``(B, L'', C)`` out (a restore may lengthen
        the sequence)."""
        return x

    # -- reporting ----------------------------------------------------------------------------
    def reduction_flops(self, token_counts: Sequence[int], out_indices: Sequence[int]) -> dict:
        """Multiply-adds per image of the reduction itself, for one forward whose blocks saw
        ``token_counts`` tokens (:attr:`ReductionContext.token_counts`).

        Returns:
            dict: ``uncounted`` (ops mmengine's counter does not see, e.g. weighted gathers and
            scatter-adds, counted here analytically) and ``counted`` (reduction ops the
            counter does see, e.g. similarity matmuls, so that totals can be given with and
            without the reduction's own cost). Default: both 0.
        """
        return dict(uncounted=0, counted=0)

    def summary(self) -> dict:
        """JSON-serialisable settings and structure (one key set for every table)."""
        return dict(type=type(self).__name__, static=self.static)

    def settings_label(self) -> str:
        """Short text of the settings for tables, e.g. ``'r=52, schedule=constant'``;
        ``'checkpoint'`` for a reducer whose structure comes with the weights."""
        s = self.summary()
        return ', '.join(f'{k}={s[k]}' for k in self.label_keys) or 'checkpoint'


def registered_reducers() -> Dict[str, type]:
    """Name -> class of every :class:`TokenReducer` in mmseg's ``MODELS`` registry."""
    from mmseg.registry import MODELS
    return {name: cls for name, cls in MODELS.module_dict.items()
            if isinstance(cls, type) and issubclass(cls, TokenReducer)}


__all__ = ['TokenReducer', 'ReductionContext', 'registered_reducers']
