from .hooks import PMCompressHook, RNGStateHook, SelfDistillationHook

__all__ = ['PMCompressHook', 'SelfDistillationHook', 'RNGStateHook']
