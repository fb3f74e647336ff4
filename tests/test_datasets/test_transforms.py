"""CheckLabelRange: every annotation's labels checked as it is loaded, the file named."""
import numpy as np
import pytest
from mmseg.registry import TRANSFORMS

from mmseg_pm.datasets import CheckLabelRange, insert_label_check
from mmseg_pm.errors import DataError


def results(labels, reduce_zero_label=True):
    return dict(gt_seg_map=np.array(labels, dtype=np.uint8).reshape(1, -1),
                seg_map_path='ann/ADE_1.png', reduce_zero_label=reduce_zero_label)


def test_labels_in_range_pass():
    check = TRANSFORMS.build(dict(type='CheckLabelRange', max_label=149))
    out = check(results([0, 5, 149, 255]))
    assert out['gt_seg_map'].tolist() == [[0, 5, 149, 255]]
    assert repr(check) == 'CheckLabelRange(max_label=149)'
    assert check(dict(img=np.zeros((2, 2)))) is not None  # no annotation: nothing to check


def test_out_of_range_names_the_file_and_the_file_values():
    check = CheckLabelRange(max_label=149)
    # after reduce_zero_label (LoadAnnotations subtracts 1) 199 is the file's 200
    with pytest.raises(DataError) as e:
        check(results([3, 199, 200, 255]))
    assert str(e.value).startswith('annotation ann/ADE_1.png has labels [200, 201] outside '
                                   '1..150 (reduce_zero_label: 0 = unlabeled), 255 = ignore')
    with pytest.raises(DataError, match=r'labels \[150\] outside 0..149, 255 = ignore'):
        check(results([0, 150], reduce_zero_label=False))


def test_insert_label_check_after_every_load_annotations():
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='TestTimeAug', transforms=[[dict(type='Resize', scale=(1, 1))],
                                                     [dict(type='LoadAnnotations')]]),
                dict(type='PackSegInputs')]
    insert_label_check(pipeline, 150)
    insert_label_check(pipeline, 150)  # idempotent
    assert [t['type'] for t in pipeline] == ['LoadImageFromFile', 'LoadAnnotations',
                                             'CheckLabelRange', 'TestTimeAug', 'PackSegInputs']
    assert pipeline[2]['max_label'] == 149
    branch = pipeline[3]['transforms'][1]
    assert [t['type'] for t in branch] == ['LoadAnnotations', 'CheckLabelRange']
    insert_label_check(None, 150)  # no pipeline: nothing to do
