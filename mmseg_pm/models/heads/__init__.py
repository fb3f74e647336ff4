from .segmenter_mask_head import FusedSegmenterMaskTransformerHead

__all__ = ['FusedSegmenterMaskTransformerHead']
