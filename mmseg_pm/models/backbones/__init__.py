from .prune_merge_vit import PruneMergeViT
from .token_reduction_vit import CompressedTokens, TokenReductionViT, reduction_backbone

__all__ = ['TokenReductionViT', 'PruneMergeViT', 'CompressedTokens', 'reduction_backbone']
