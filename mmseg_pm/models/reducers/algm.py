"""ALGM for dense prediction: local 2x2 merging in the first block, global merging mid-network."""
from typing import Optional, Sequence, Set

from mmseg.registry import MODELS
from torch import Tensor

from ...errors import ConfigError
from ...functional.algm import algm_global_merge, algm_local_merge
from ..layers.attention import AttentionTap
from .base import ReductionContext, TokenReducer

#: the released code's global block per depth (``--selected-layers 1 5`` for ViT-T/S/B,
#: ``1 7`` for ViT-L, 1-based)
DEFAULT_GLOBAL_BLOCK = {12: 4, 24: 6}


@MODELS.register_module()
class ALGM(TokenReducer):
    """ALGM (Norouzi, Orlova, Dubbelman, de Geus, "ALGM: Adaptive Local-then-Global Token
    Merging for Efficient Semantic Segmentation with Plain Vision Transformers", CVPR 2024,
    arXiv 2406.09936; official code tue-mps/algm-segmenter) in a segmentation ViT.

    Between the attention residual and the MLP: in ``local_block`` every 2x2 window of patch
    tokens whose mean pairwise cosine similarity reaches ``threshold`` becomes one token (its
    mean); in ``global_block`` ToMe's bipartite matching on the token features merges every
    pair above ``mean + std * std_scale`` of the best-edge similarities
    (:mod:`mmseg_pm.functional.algm`). Merged tokens stay merged; outputs are restored to the
    full grid by unmerging (each patch gets a copy of its token; the released code instead runs
    the decoder on the merged tokens, so its GFLOPs include a cheaper decoder). Sizes weight
    the global merge; no proportional attention (as released).

    The token counts depend on the image (not static: no fixed-shape ONNX export). With
    ``batch_minimum=False`` (default) every image of a batch merges its own count: the batch is
    padded to its longest image and padding keys are masked out of attention, so each image's
    output equals its output alone. ``batch_minimum=True`` reproduces the released code (every
    image merges the batch's minimum count; the global threshold uses batch statistics), which
    makes an image's output depend on its batch-mates.

    Args:
        threshold (float | None): local similarity threshold (the released ADE20K settings:
            ViT-T 0.9, S 0.88, B 0.94, L 0.95); None switches the local step off.
        local_block (int): block of the local step. Default: 0.
        global_block (int | None): block of the global step; default 4 for 12 blocks, 6 for
            24, ``num_layers // 3`` otherwise; None switches it off.
        std_scale (float, optional): coefficient of the std in the global threshold; default
            ``1 / (global_block + 1)`` as released.
        batch_minimum (bool): the released code's batch rule. Default: False.
        window (int): local window side. Default: 2.
        proportional_attention (bool): add ``log(size)`` to the attention logits (not in the
            released code). Default: False.
        **kwargs: :class:`TokenReducer` arguments (set by the backbone).

    Raises:
        ConfigError: blocks out of range or in the wrong order; a grid not divisible by the
            window (at the first forward).
    """
    label_keys = ('threshold', 'local_block', 'global_block')
    static = False

    def __init__(self, threshold: Optional[float] = 0.88, local_block: int = 0,
                 global_block: Optional[int] = -1, std_scale: Optional[float] = None,
                 batch_minimum: bool = False, window: int = 2,
                 proportional_attention: bool = False, **kwargs):
        super().__init__(**kwargs)
        if global_block == -1:
            global_block = DEFAULT_GLOBAL_BLOCK.get(self.num_layers, self.num_layers // 3)
        for name, b in (('local_block', local_block), ('global_block', global_block)):
            if b is not None and not 0 <= b < self.num_layers:
                raise ConfigError(f'ALGM {name}={b} out of range for {self.num_layers} blocks')
        if threshold is not None and global_block is not None and global_block <= local_block:
            raise ConfigError(f'ALGM global_block ({global_block}) must come after local_block '
                              f'({local_block})')
        self.threshold = threshold
        self.local_block = local_block if threshold is not None else None
        self.global_block = global_block
        self.std_scale = std_scale
        self.batch_minimum = bool(batch_minimum)
        self.window = int(window)
        self.proportional_attention = bool(proportional_attention)

    @property
    def is_identity(self) -> bool:
        return self.local_block is None and self.global_block is None

    @property
    def post_attn_blocks(self) -> Set[int]:
        return {b for b in (self.local_block, self.global_block) if b is not None}

    def post_attn(self, block: int, x: Tensor, ctx: ReductionContext,
                  tap: Optional[AttentionTap]) -> Tensor:
        p = ctx.num_prefix
        if block == self.local_block:
            red = algm_local_merge(x, ctx.grid, self.threshold, p, self.batch_minimum,
                                   self.window)
        else:
            red = algm_global_merge(x, ctx.size, block + 1, p, self.batch_minimum,
                                    self.std_scale)
        return ctx.apply(x, red, block)

    def reduction_flops(self, token_counts: Sequence[int], out_indices: Sequence[int]) -> dict:
        """Global similarity ``ceil(L/2) floor(L/2) C`` (matmul, counted); local window
        similarities ``16 C`` per window and the size weighting ``L C`` (not counted)."""
        counted = uncounted = 0
        if self.local_block is not None:
            n = token_counts[self.local_block] - self.num_prefix
            uncounted += n // (self.window**2) * 16 * self.embed_dims
        if self.global_block is not None:
            n = token_counts[self.global_block]
            counted += -(-n // 2) * (n // 2) * self.embed_dims
            uncounted += n * self.embed_dims
        return dict(uncounted=uncounted, counted=counted)

    def summary(self) -> dict:
        return dict(super().summary(), threshold=self.threshold, local_block=self.local_block,
                    global_block=self.global_block, std_scale=self.std_scale,
                    batch_minimum=self.batch_minimum)
