"""timm ViT / DeiT / AugReg / MAE -> mmseg ViT keys (:mod:`mmseg_pm.converters.timm`)."""
from collections import OrderedDict

import pytest
import timm
import torch
from mmseg.models.backbones import VisionTransformer
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import checkpoint_filter_fn

from mmseg_pm.converters.formats import ConversionReport
from mmseg_pm.converters.timm import convert_timm_vit
from mmseg_pm.errors import CheckpointFormatError
from mmseg_pm.models import PruneMergeViT

from .utils import EMBED, GRID, IMG, TINY, our_backbone, timm_patch_tokens, tiny_timm


@pytest.mark.parametrize('name,kw', [
    ('vit_tiny_patch16_384', {}),             # AugReg (T/S/B/L share the layout)
    ('vit_small_patch16_384', {}),
    ('vit_base_patch16_384', {}),
    ('vit_large_patch16_384', {}),
    ('deit_small_patch16_224', {}),
    ('vit_base_patch16_224.mae', {}),
    ('vit_tiny_patch16_224', dict(init_values=0.1)),   # LayerScale folded into the linears
])
def test_timm_parity(name, kw):
    src = tiny_timm(name, **kw)
    report = ConversionReport()
    converted = convert_timm_vit(src.state_dict(), report=report)
    assert ('head.weight' in report.dropped) == ('head.weight' in src.state_dict())
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ref = timm_patch_tokens(src, x)
        for cls in (PruneMergeViT, VisionTransformer):
            model = our_backbone(cls)
            model.load_state_dict(converted, strict=True)
            out = model(x)[0]
            assert out.shape == (2, EMBED, *GRID)
            assert (out - ref).abs().max() <= 1e-4, cls.__name__
        # a PruneMergeViT with (identity) units loads the same file strictly
        model = our_backbone(pm_cfg=dict(mode='layer'))
        model.load_state_dict(converted, strict=True)
        assert (model(x)[0] - ref).abs().max() <= 1e-4


def test_timm_pos_embed_resampled_like_timm():
    src = tiny_timm('vit_small_patch16_384', img_size=48)          # 3x3 grid
    report = ConversionReport()
    converted = convert_timm_vit(src.state_dict(), grid_size=GRID, report=report)
    expected = resample_abs_pos_embed(src.pos_embed.detach(), list(GRID), num_prefix_tokens=1)
    assert torch.allclose(converted['pos_embed'], expected)
    assert 'resampled 3x3 -> 4x4' in report.converted['pos_embed']
    # same features as timm's own model at 64 px loaded through timm's checkpoint filter
    target = timm.create_model('vit_small_patch16_384', pretrained=False, **TINY).eval()
    target.load_state_dict(checkpoint_filter_fn(src.state_dict(), target))
    model = our_backbone()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        assert (model(x)[0] - timm_patch_tokens(target, x)).abs().max() <= 1e-4


@pytest.mark.parametrize('grid,patch', [((6, 6), 8), ((2, 2), 32), ((5, 3), 16)])
def test_timm_geometry_resampled_like_timm_checkpoint_filter(grid, patch):
    """pos_embed and patch kernel resampling equal timm's checkpoint_filter_fn for a model of
    the target geometry (what the converter used before it called timm.layers directly)."""
    sd = tiny_timm('vit_small_patch16_384', img_size=48).state_dict()  # 3x3 grid, 16 px
    target = timm.create_model('vit_small_patch16_384', pretrained=False, depth=2,
                               embed_dim=EMBED, num_heads=2, patch_size=patch,
                               img_size=(grid[0] * patch, grid[1] * patch))
    target.pretrained_model_args = dict(img_size=(48, 48))
    expected = checkpoint_filter_fn(
        {k: sd[k] for k in ('pos_embed', 'patch_embed.proj.weight')}, target)
    report = ConversionReport()
    converted = convert_timm_vit(sd, grid, patch_size=patch, report=report)
    assert torch.equal(converted['pos_embed'], expected['pos_embed'])
    assert torch.equal(converted['patch_embed.projection.weight'],
                       expected['patch_embed.proj.weight'])
    assert ('patch_embed.proj.weight' in report.converted) == (patch != 16)


def test_deit_distilled_drops_dist_token():
    src = tiny_timm('deit_tiny_distilled_patch16_224')
    sd = src.state_dict()
    assert sd['pos_embed'].shape[1] == 2 + 16
    report = ConversionReport()
    converted = convert_timm_vit(sd, report=report)
    assert {'dist_token', 'head_dist.weight', 'head_dist.bias', 'head.weight'} <= set(
        report.dropped)
    assert torch.equal(converted['pos_embed'],
                       torch.cat([sd['pos_embed'][:, :1], sd['pos_embed'][:, 2:]], dim=1))
    assert any('distillation token' in n for n in report.notes)
    assert 'dist_token' in report.summary()
    our_backbone().load_state_dict(converted, strict=True)
    with pytest.raises(CheckpointFormatError, match='dist_token'):
        convert_timm_vit(sd, drop_dist_token=False)


def test_mae_pretrain_file_drops_decoder():
    src = tiny_timm('vit_base_patch16_224.mae')
    sd = OrderedDict(src.state_dict())
    sd.update({'mask_token': torch.zeros(1, 1, 16), 'decoder_embed.weight': torch.zeros(16, 32),
               'decoder_pos_embed': torch.zeros(1, 17, 16),
               'decoder_blocks.0.norm1.weight': torch.ones(16),
               'decoder_norm.weight': torch.ones(16), 'decoder_pred.weight': torch.zeros(768, 16)})
    report = ConversionReport()
    converted = convert_timm_vit(sd, report=report)
    assert 'mask_token' in report.dropped and 'decoder_pred.weight' in report.dropped
    model = our_backbone()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        assert (model(x)[0] - timm_patch_tokens(src, x)).abs().max() <= 1e-4


def test_unsupported_timm_keys_raise():
    sd = tiny_timm('vit_tiny_patch16_224', qk_norm=True).state_dict()
    with pytest.raises(CheckpointFormatError, match='q_norm'):
        convert_timm_vit(sd)
