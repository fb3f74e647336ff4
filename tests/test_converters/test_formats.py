"""Reading and recognising checkpoints (:mod:`mmseg_pm.converters.formats`)."""
import pytest
import torch

from mmseg_pm.converters.formats import (ConversionReport, detect_format, patch_size_of,
                                         split_blocks, unwrap_checkpoint, wrong_format_message)
from mmseg_pm.converters.timm import convert_timm_vit
from mmseg_pm.errors import CheckpointFormatError

from .utils import tiny_timm


def test_detect_format_and_unknown_layout():
    sd = tiny_timm().state_dict()
    assert detect_format(sd) == 'timm'
    mm = convert_timm_vit(sd)
    assert detect_format(mm) == 'mmseg'
    assert detect_format({'backbone.' + k: v for k, v in mm.items()}) == 'mmseg_segmentor'
    with pytest.raises(CheckpointFormatError) as e:
        detect_format({'foo.weight': torch.zeros(1), 'bar.bias': torch.zeros(1)})
    assert 'foo.weight' in str(e.value) and 'timm' in str(e.value) and 'segmenter' in str(e.value)


def test_unwrap_checkpoint():
    sd = {'module.a': torch.zeros(1), 'module.b': torch.ones(2)}
    state, extras = unwrap_checkpoint(dict(model=sd, epoch=3, channels=[5]))
    assert list(state) == ['a', 'b'] and extras == dict(epoch=3, channels=[5])
    with pytest.raises(CheckpointFormatError, match='no state dict'):
        unwrap_checkpoint({'meta': {}, 'epoch': 1})
    with pytest.raises(CheckpointFormatError, match='must be a dict'):
        unwrap_checkpoint([torch.zeros(1)])


def test_patch_size_and_blocks():
    sd = tiny_timm().state_dict()
    assert patch_size_of(sd) == 16
    assert patch_size_of({'encoder.' + k: v for k, v in sd.items()}, 'encoder.') == 16
    assert patch_size_of({}) == 16 and patch_size_of({}, default=None) is None
    blocks, rest = split_blocks(sd)
    assert list(blocks) == [0, 1] and 'norm1.weight' in blocks[1]
    assert 'cls_token' in rest and not any(k.startswith('blocks.') for k in rest)


def test_wrong_format_message():
    msg = wrong_format_message('a.pth', 'segmenter', 'timm', 'the Segmenter converter')
    assert msg.startswith('a.pth is a segmenter checkpoint (') and msg.endswith(
        'not timm: use the Segmenter converter')
    assert 'needs no conversion' in wrong_format_message('a.pth', 'mmseg', 'timm')
    report = ConversionReport('timm')
    report.note('x')
    report.note('x')
    assert report.notes == ['x'] and report.summary().startswith('source format: timm (')
