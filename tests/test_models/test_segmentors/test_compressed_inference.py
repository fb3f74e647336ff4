"""A compressed (fixed-token-count) segmentor on images whose size is not a multiple of the
patch size, below its crop: padded, not refused, in whole and slide inference."""
import pytest
import torch
from mmengine.config import ConfigDict
from mmseg.structures import SegDataSample

from mmseg_pm.errors import FixedTokenCountError
from tests.utils import DEMO, build_model, compress_randomly


@pytest.fixture(scope='module')
def compressed():
    model = compress_randomly(build_model(DEMO))
    assert model.backbone.is_compressed and model.backbone.fixed_input_size == (256, 256)
    return model


def predict(model, h, w):
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                         padding_size=[0, 0, 0, 0]))
    with torch.no_grad():
        return model.predict(torch.randn(1, 3, h, w), [sample])[0]


def test_whole_inference_below_the_crop_is_padded(compressed):
    compressed.test_cfg = ConfigDict(mode='whole')
    out = predict(compressed, 250, 253)
    assert out.seg_logits.data.shape == (150, 250, 253)
    with torch.no_grad():
        feats = compressed.backbone(torch.randn(1, 3, 250, 253))
    assert feats[-1].shape[-2:] == (16, 16)  # ceil(250 / 16), ceil(253 / 16)


def test_slide_windows_are_full_crops_or_padded(compressed):
    compressed.test_cfg = ConfigDict(mode='slide', crop_size=(256, 256), stride=(192, 192))
    out = predict(compressed, 230, 300)
    assert out.seg_logits.data.shape == (150, 230, 300)
    assert torch.isfinite(out.seg_logits.data).all()


def test_input_above_the_crop_is_refused(compressed):
    with pytest.raises(FixedTokenCountError):
        with torch.no_grad():
            compressed.backbone(torch.randn(1, 3, 320, 256))
