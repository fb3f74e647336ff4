from .prune_merge_vit import CompressedTokens, PruneMergeViT

__all__ = ['PruneMergeViT', 'CompressedTokens']
