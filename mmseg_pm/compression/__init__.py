"""The compression step: gradient-weighted scoring, global structure search, installation."""
from .compress import COMPRESS_KEYS, compress_segmentor, get_pm_backbone
from .scoring import AttentionScorer, score_segmentor
from .search import format_table, normalize_scores, search_structures

__all__ = [
    'AttentionScorer', 'score_segmentor', 'normalize_scores', 'search_structures',
    'format_table', 'compress_segmentor', 'get_pm_backbone', 'COMPRESS_KEYS'
]
