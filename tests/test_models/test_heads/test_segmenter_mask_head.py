"""The fused Segmenter mask head equals mmseg's head (same parameters, fused attention)."""
import torch
from mmseg.models.decode_heads import SegmenterMaskTransformerHead

from mmseg_pm.models import FusedMultiheadAttention, FusedSegmenterMaskTransformerHead


def test_fused_head_equals_mmseg_head():
    kw = dict(in_channels=32, channels=32, num_classes=7, num_layers=2, num_heads=4,
              embed_dims=32, dropout_ratio=0.0)
    ref = SegmenterMaskTransformerHead(**kw)
    ref.init_weights()
    head = FusedSegmenterMaskTransformerHead(**kw)
    head.load_state_dict(ref.state_dict(), strict=True)
    assert all(isinstance(layer.attn, FusedMultiheadAttention) for layer in head.layers)
    ref.eval()
    head.eval()
    x = [torch.randn(2, 32, 4, 6)]
    with torch.no_grad():
        assert (head(x) - ref(x)).abs().max() <= 1e-5
