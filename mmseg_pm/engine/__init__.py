from .hooks import PMCompressHook

__all__ = ['PMCompressHook']
