from .token_reconstruct_neck import TokenReconstructNeck

__all__ = ['TokenReconstructNeck']
