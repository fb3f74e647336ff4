"""Data-side additions: transforms registered into mmseg's ``TRANSFORMS``."""
from .transforms import CheckLabelRange, insert_label_check

__all__ = ['CheckLabelRange', 'insert_label_check']
