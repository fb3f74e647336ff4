"""ToMe for dense prediction: bipartite soft matching in every block, restored by unmerging."""
from typing import Optional, Sequence, Set, Union

from mmseg.registry import MODELS
from torch import Tensor

from ...functional.tome import parse_r, tome_merge
from ..layers.attention import AttentionTap
from .base import ReductionContext, TokenReducer


@MODELS.register_module()
class ToMe(TokenReducer):
    """Token Merging (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023, arXiv
    2210.09461) in a segmentation ViT.

    In every block with ``r_l > 0``, between the attention residual and the MLP, the tokens are
    split alternately into sets A and B, each A token's most similar B token (cosine on the
    block's keys averaged over heads) is its candidate, and the ``r_l`` best pairs merge by the
    size-weighted average (:func:`mmseg_pm.functional.tome.tome_merge`); the CLS token is never
    merged. Merged tokens stay merged ("carry") and every output is restored to the full grid
    by unmerging through the composed source map (each patch gets a copy of the token that
    holds it). Proportional attention adds ``log(size)`` to the attention logits. Static: the
    token counts depend only on ``r`` and the crop, so batches need no padding and ONNX export
    works. Training-free (no parameters), and trainable (gradients flow through the merged
    values).

    Args:
        r (int | tuple | list): merges per block: an int (constant), ``(r, inflection)``
            (ToMe's schedule; inflection -1 = decreasing from 2r to 0) or one value per block
            (:func:`mmseg_pm.functional.tome.parse_r`). 0: identity.
        proportional_attention (bool): add ``log(size)`` to the attention logits. Default:
            True (ToMe's default for off-the-shelf models).
        **kwargs: :class:`TokenReducer` arguments (set by the backbone).

    Raises:
        ConfigError: a bad ``r``.
    """
    label_keys = ('r', 'proportional_attention')

    def __init__(self, r: Union[int, Sequence[int]] = 0, proportional_attention: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.r = r
        self.schedule = parse_r(r, self.num_layers)
        self.proportional_attention = bool(proportional_attention)

    @property
    def is_identity(self) -> bool:
        return not any(self.schedule)

    @property
    def post_attn_blocks(self) -> Set[int]:
        return {i for i, r in enumerate(self.schedule) if r > 0}

    def tap(self, block: int) -> Optional[AttentionTap]:
        return AttentionTap(mean_keys=True)

    def post_attn(self, block: int, x: Tensor, ctx: ReductionContext,
                  tap: Optional[AttentionTap]) -> Tensor:
        red = tome_merge(x, tap.keys, ctx.size, self.schedule[block], ctx.num_prefix)
        return ctx.apply(x, red, block)

    def reduction_flops(self, token_counts: Sequence[int], out_indices: Sequence[int]) -> dict:
        """Similarity ``ceil(L/2) floor(L/2) d`` per merging block (a matmul the counter sees)
        and the size weighting ``L C`` (not seen); restores are copies."""
        d = self.embed_dims // self.num_heads
        counted = uncounted = 0
        for i in self.post_attn_blocks:
            n = token_counts[i]
            counted += -(-n // 2) * (n // 2) * d
            uncounted += n * self.embed_dims
        return dict(uncounted=uncounted, counted=counted)

    def summary(self) -> dict:
        return dict(super().summary(), r=self.r, schedule=self.schedule,
                    proportional_attention=self.proportional_attention)
