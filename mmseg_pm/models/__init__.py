"""Models of mmseg_pm; importing registers them into ``mmseg.registry.MODELS``."""
from ..errors import PMStructureError  # the import path of earlier releases
from ..functional.prune_merge import PMStructure  # the import path of earlier releases
from .backbones import CompressedTokens, PruneMergeViT, TokenReductionViT
from .heads import FusedSegmenterMaskTransformerHead
from .layers import FusedMultiheadAttention
from .necks import TokenReconstructNeck
from .reducers import ALGM, MSTM, EViT, PruneMerge, PruneMergeUnit, ToMe, TokenReducer
from .segmentors import PMDistillEncoderDecoder

__all__ = [
    'TokenReductionViT', 'PruneMergeViT', 'CompressedTokens', 'FusedMultiheadAttention',
    'FusedSegmenterMaskTransformerHead', 'TokenReconstructNeck', 'TokenReducer', 'PruneMerge',
    'PruneMergeUnit', 'ToMe', 'EViT', 'ALGM', 'MSTM', 'PMDistillEncoderDecoder', 'PMStructure',
    'PMStructureError'
]
