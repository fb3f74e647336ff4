"""``CheckLabelRange``: every annotation's labels checked as it is loaded, the file named."""
from typing import List, Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from ..errors import DataError


@TRANSFORMS.register_module()
class CheckLabelRange(BaseTransform):
    """Refuse an annotation with labels outside ``[0, max_label]`` (255 = ignore allowed).

    Place it right after ``LoadAnnotations``: after ``reduce_zero_label`` the valid labels of
    N classes are ``0..N-1`` and 255; a value above would fail deep inside the loss (an
    ``IndexError`` naming no file) or train on garbage. ``tools/train.py`` and
    ``tools/test.py`` insert it into every pipeline (:func:`insert_label_check`), so all
    annotations are checked lazily, at no extra read.

    Args:
        max_label (int): the largest valid class index (N - 1).
        ignore_index (int): the label that marks ignored pixels. Default: 255.

    Raises:
        DataError: (in ``transform``) labels out of range, with the annotation file.
    """

    def __init__(self, max_label: int, ignore_index: int = 255):
        self.max_label = int(max_label)
        self.ignore_index = int(ignore_index)

    def transform(self, results: dict) -> dict:
        seg = results.get('gt_seg_map')
        if seg is not None:
            values = np.unique(seg)
            bad = values[((values < 0) | (values > self.max_label))
                         & (values != self.ignore_index)]
            if bad.size:
                # name the values as they are in the file (LoadAnnotations subtracted 1)
                reduced = bool(results.get('reduce_zero_label'))
                shown = (bad.astype(np.int64) + 1) if reduced else bad
                valid = (f'1..{self.max_label + 1} (reduce_zero_label: 0 = unlabeled)'
                         if reduced else f'0..{self.max_label}')
                raise DataError(
                    f'annotation {results.get("seg_map_path", "?")} has labels '
                    f'{shown[:5].tolist()} outside {valid}, {self.ignore_index} = ignore: '
                    f'convert the annotations to class indices')
        return results

    def __repr__(self):
        return f'{type(self).__name__}(max_label={self.max_label})'


def insert_label_check(pipeline: Optional[List[dict]], num_classes: int) -> None:
    """Insert :class:`CheckLabelRange` after every ``LoadAnnotations`` of ``pipeline`` (in
    place; test-time-augmentation branches included)."""
    for i in reversed(range(len(pipeline or []))):
        step = pipeline[i]
        if isinstance(step, list):
            insert_label_check(step, num_classes)
            continue
        if not isinstance(step, dict):
            continue
        if step.get('type') == 'TestTimeAug':
            for branch in step.get('transforms', []):
                insert_label_check(branch, num_classes)
        elif step.get('type') == 'LoadAnnotations' and not (
                i + 1 < len(pipeline) and isinstance(pipeline[i + 1], dict)
                and pipeline[i + 1].get('type') == 'CheckLabelRange'):
            pipeline.insert(i + 1, dict(type='CheckLabelRange', max_label=num_classes - 1))
