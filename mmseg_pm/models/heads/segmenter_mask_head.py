"""``FusedSegmenterMaskTransformerHead``: mmseg's Segmenter mask head with fused attention."""
from mmseg.models.decode_heads import SegmenterMaskTransformerHead
from mmseg.registry import MODELS

from ..layers.attention import fuse_attention


@MODELS.register_module()
class FusedSegmenterMaskTransformerHead(SegmenterMaskTransformerHead):
    """Segmenter's mask transformer decoder (Strudel et al., ICCV 2021, arXiv 2105.05633), as
    mmseg's ``SegmenterMaskTransformerHead``, with fused attention.

    Modifications: every transformer layer's attention is
    :class:`~mmseg_pm.models.layers.FusedMultiheadAttention` (``F.scaled_dot_product_attention``
    instead of the explicit bmm-softmax-bmm path); parameters, names, checkpoints and outputs
    (within float rounding) are mmseg's. Use it in any config by changing
    ``decode_head=dict(type='SegmenterMaskTransformerHead', ...)`` to this type.

    Args: as mmseg's ``SegmenterMaskTransformerHead``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        fuse_attention(self.layers)
