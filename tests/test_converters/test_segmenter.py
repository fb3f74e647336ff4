"""rstrudel/segmenter -> mmseg EncoderDecoder (:mod:`mmseg_pm.converters.segmenter`)."""
import pytest
import torch

from mmseg_pm.converters.formats import ConversionReport, detect_format
from mmseg_pm.converters.segmenter import convert_segmenter
from mmseg_pm.errors import CheckpointFormatError

from .utils import EMBED, GRID, IMG, encoder_tokens, segmenter_mmseg, segmenter_source


@pytest.mark.parametrize('decoder', ['mask', 'linear'])
def test_segmenter_round_trip(decoder):
    checkpoint, encoder, dec = segmenter_source(decoder)
    assert detect_format(checkpoint['model']) == 'segmenter'
    report = ConversionReport()
    converted = convert_segmenter(checkpoint, report=report)
    assert set(k.split('.')[0] for k in converted) == {'backbone', 'decode_head'}
    assert 'encoder.head.weight' in report.dropped
    seg = segmenter_mmseg(decoder)
    seg.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ref = dec(encoder_tokens(encoder, x)[:, 1:], GRID)
        out = seg.decode_head(seg.backbone(x))
    assert out.shape == (2, 5, *GRID)
    assert (out - ref).abs().max() <= 1e-4


def test_segmenter_distilled_encoder_needs_opt_in():
    checkpoint, _, _ = segmenter_source()
    sd = checkpoint['model']
    sd['encoder.dist_token'] = torch.zeros(1, 1, EMBED)
    sd['encoder.pos_embed'] = torch.cat([sd['encoder.pos_embed'][:, :1],
                                         sd['encoder.pos_embed']], dim=1)
    with pytest.raises(CheckpointFormatError, match='drop-dist-token'):
        convert_segmenter(checkpoint)
    converted = convert_segmenter(checkpoint, drop_dist_token=True)
    segmenter_mmseg().load_state_dict(converted, strict=True)
