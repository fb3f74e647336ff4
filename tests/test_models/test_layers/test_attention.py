"""Fused attention: mmseg's / mmcv's explicit attention within float rounding, the pieces a
token reducer asks for, proportional attention as duplicated keys."""
import pytest
import torch
from mmseg.models.backbones.vit import TransformerEncoderLayer

from mmseg_pm.models.layers import (AttentionTap, FusedMultiheadAttention,
                                    encoder_layer_forward, fuse_attention, self_attention)


def layer_pair(dims=32, heads=4, **kw):
    ref = TransformerEncoderLayer(embed_dims=dims, num_heads=heads,
                                  feedforward_channels=4 * dims, **kw).eval()
    fused = TransformerEncoderLayer(embed_dims=dims, num_heads=heads,
                                    feedforward_channels=4 * dims, **kw).eval()
    fused.load_state_dict(ref.state_dict())
    fuse_attention([fused])
    return ref, fused


@pytest.mark.parametrize('kw', [dict(), dict(qkv_bias=False)])
def test_fused_layer_equals_mmseg_layer(kw):
    ref, fused = layer_pair(**kw)
    assert isinstance(fused.attn, FusedMultiheadAttention)
    assert set(fused.state_dict()) == set(ref.state_dict())  # same names, same checkpoints
    x = torch.randn(3, 17, 32)
    with torch.no_grad():
        assert (fused(x) - ref(x)).abs().max() <= 1e-5
    # training: gradients flow through the fused kernel
    fused.train()
    fused(x).sum().backward()
    assert fused.attn.attn.in_proj_weight.grad.abs().sum() > 0


def test_tap_pieces_match_the_explicit_map():
    _, fused = layer_pair()
    attn = fused.attn.attn
    x = torch.randn(2, 9, 32)
    maps = []
    tap = AttentionTap(mean_keys=True, cls_attn=True, attn_hook=maps.append)
    with torch.no_grad():
        out = self_attention(attn, x, tap=tap)
        ref = self_attention(attn, x)  # fused kernel
    assert (out - ref).abs().max() <= 1e-5
    a = maps[0]  # (B, heads, L, L), rows sum to 1
    assert a.shape == (2, 4, 9, 9) and torch.allclose(a.sum(-1), torch.ones(2, 4, 9))
    assert torch.allclose(tap.cls_attention, a[:, :, 0].mean(1), atol=1e-6)
    k = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)[..., 32:64]
    assert torch.allclose(tap.keys, k.view(2, 9, 4, 8).mean(2), atol=1e-6)


def test_log_size_bias_equals_duplicated_keys():
    """Proportional attention: a key standing for s tokens with bias log(s) attends exactly as
    s copies of it (ToMe, Bolya et al., ICLR 2023)."""
    _, fused = layer_pair()
    attn = fused.attn.attn
    x = torch.randn(1, 5, 32)
    dup = torch.cat([x, x[:, 2:3], x[:, 2:3]], dim=1)  # token 2 three times
    size = torch.tensor([[1., 1., 3., 1., 1.]])
    with torch.no_grad():
        a = self_attention(attn, x, bias=size.log()[:, None, None, :])
        b = self_attention(attn, dup)
    assert (a - b[:, :5]).abs().max() <= 1e-5


def test_encoder_layer_forward_calls_between_after_the_attention_residual():
    ref, fused = layer_pair()
    x = torch.randn(2, 7, 32)
    seen = []
    with torch.no_grad():
        y = encoder_layer_forward(fused, x, between=lambda t: seen.append(t) or t[:, :5])
        after_attn = fused.attn(fused.norm1(x), identity=x)
    assert y.shape == (2, 5, 32)
    assert torch.allclose(seen[0], after_attn)


def test_encoder_layer_forward_writes_into_out():
    """``out=`` (the layer's own input here) receives exactly the layer's output."""
    _, fused = layer_pair()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = fused(x)
        buffer = x.clone()
        y = encoder_layer_forward(fused, buffer, out=buffer)
    assert y is buffer
    assert torch.equal(y, expected)


def test_cross_attention_is_refused():
    _, fused = layer_pair()
    x = torch.randn(1, 4, 32)
    with pytest.raises(NotImplementedError):
        fused.attn(x, key=torch.randn(1, 3, 32))
