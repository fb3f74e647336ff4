"""Checkpoint converters (timm / Segmenter / official Prune-and-Merge) and the pretrained loader.

Every source checkpoint is built here (random timm models, synthetic state dicts with the
official key layouts of rstrudel/segmenter, pm-vit and PM-Segmenter); nothing is downloaded.
"""
import argparse
import importlib.util
import os.path as osp
from collections import OrderedDict

import pytest
import timm
import torch
from mmengine.config import Config
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, checkpoint_filter_fn
from torch import nn

import mmseg_pm  # noqa: F401
from mmseg_pm.models import PruneMergeViT
from mmseg_pm.converters.checkpoint import (ConversionReport, convert_pm_official,
                                            convert_segmenter, convert_timm_vit, detect_format,
                                            load_pretrained_backbone,
                                            pm_structure_from_state_dict)
from mmseg_pm.errors import CheckpointFormatError, CheckpointMismatchError
from mmseg_pm.errors import StructureError as PMStructureError
from mmseg_pm.functional import prune_merge as pm
from mmseg_pm.functional import prune_merge_dense as pmd
from mmseg_pm.functional.prune_merge_dense import structure_from_dense
from mmseg_pm.utils import run_cli

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
EMBED, HEADS, IMG, GRID = 32, 2, 64, (4, 4)
TINY = dict(img_size=IMG, depth=2, embed_dim=EMBED, num_heads=HEADS)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def perturb(module: nn.Module, std: float = 0.05) -> nn.Module:
    """Randomise every parameter (LayerNorm weights, biases, LayerScale) so parity is strict."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module.eval()


def tiny_timm(name: str = 'vit_tiny_patch16_224', **kw) -> nn.Module:
    args = dict(TINY, **kw)
    return perturb(timm.create_model(name, pretrained=False, **args))


def our_backbone(cls=PruneMergeViT, **kw):
    cfg = dict(img_size=IMG, patch_size=16, embed_dims=EMBED, num_layers=2, num_heads=HEADS,
               final_norm=True, patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6))
    cfg.update(kw)
    model = cls(**cfg)
    model.eval()  # mmseg's VisionTransformer.train() returns None
    return model


def timm_patch_tokens(model, x):
    """timm ``forward_features`` patch tokens after the final norm, as (B, C, H/16, W/16)."""
    tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
    b, n, c = tokens.shape
    side = int(n ** 0.5)
    return tokens.reshape(b, side, side, c).permute(0, 3, 1, 2)


def strip(state_dict, prefix):
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                       if k.startswith(prefix))


def load_tool(name):
    path = osp.join(REPO, 'tools', 'model_converters', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_converter_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RefMaskTransformer(nn.Module):
    """rstrudel/segmenter ``MaskTransformer`` (same parameter names; timm blocks)."""

    def __init__(self, n_cls, d_encoder, n_layers, d_model, n_heads):
        super().__init__()
        self.n_cls = n_cls
        self.blocks = nn.ModuleList([Block(d_model, n_heads, qkv_bias=True)
                                     for _ in range(n_layers)])
        self.cls_emb = nn.Parameter(torch.randn(1, n_cls, d_model))
        self.proj_dec = nn.Linear(d_encoder, d_model)
        self.proj_patch = nn.Parameter(d_model ** -0.5 * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(d_model ** -0.5 * torch.randn(d_model, d_model))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.mask_norm = nn.LayerNorm(n_cls)

    def forward(self, x, grid):
        x = self.proj_dec(x)
        x = torch.cat((x, self.cls_emb.expand(x.size(0), -1, -1)), 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        patches, cls_seg_feat = x[:, :-self.n_cls], x[:, -self.n_cls:]
        patches = patches @ self.proj_patch
        cls_seg_feat = cls_seg_feat @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        cls_seg_feat = cls_seg_feat / cls_seg_feat.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(patches @ cls_seg_feat.transpose(1, 2))
        return masks.transpose(1, 2).reshape(x.size(0), self.n_cls, *grid)


class RefLinearDecoder(nn.Module):
    """rstrudel/segmenter ``DecoderLinear``."""

    def __init__(self, n_cls, d_encoder):
        super().__init__()
        self.head = nn.Linear(d_encoder, n_cls)

    def forward(self, x, grid):
        return self.head(x).transpose(1, 2).reshape(x.size(0), -1, *grid)


def encoder_tokens(encoder, x, units=None):
    """Official encoder forward (timm blocks) with dense PM units ``{a: (b, M, R, t)}``
    applied as method.md §1.3 / §1.7: ``z = M x`` before block a, ``y = R z + (1 - t) x``
    after block b. Returns the normed tokens (B, 1 + N, C)."""
    x = encoder._pos_embed(encoder.patch_embed(x))
    units = units or {}
    end = shortcut = None
    for i, blk in enumerate(encoder.blocks):
        if i in units:
            end, m, r, t = units[i]
            shortcut = x
            x = m @ x
        x = blk(x)
        if i == end:
            x = r @ x + (1 - t)[None, :, None] * shortcut
            end = None
    return encoder.norm(x)


def segmenter_source(decoder='mask', depth=2, n_cls=5, d_model=EMBED):
    """A Segmenter checkpoint dict with the official layout plus its reference modules."""
    encoder = tiny_timm('vit_tiny_patch16_384', depth=depth, num_classes=1000)
    dec = (RefMaskTransformer(n_cls, EMBED, 1, d_model, HEADS) if decoder == 'mask' else
           RefLinearDecoder(n_cls, EMBED))
    perturb(dec)
    sd = OrderedDict(('encoder.' + k, v) for k, v in encoder.state_dict().items())
    sd.update(('decoder.' + k, v) for k, v in dec.state_dict().items())
    return dict(model=sd, n_cls=n_cls), encoder, dec


def segmenter_mmseg(decoder='mask', n_cls=5, depth=2, pm_cfg=None, eps=1e-6):
    head = (dict(type='SegmenterMaskTransformerHead', in_channels=EMBED, channels=EMBED,
                 num_classes=n_cls, num_layers=1, num_heads=HEADS, embed_dims=EMBED,
                 dropout_ratio=0.0) if decoder == 'mask' else
            dict(type='FCNHead', in_channels=EMBED, channels=EMBED, num_convs=0,
                 concat_input=False, dropout_ratio=0.0, num_classes=n_cls))
    seg = MODELS.build(dict(
        type='EncoderDecoder',
        backbone=dict(type='PruneMergeViT', img_size=(IMG, IMG), patch_size=16,
                      embed_dims=EMBED, num_layers=depth, num_heads=HEADS, final_norm=True,
                      patch_bias=True, norm_cfg=dict(type='LN', eps=eps), pm_cfg=pm_cfg),
        decode_head=head))
    seg.eval()
    return seg


def official_units(depth, keep=0.5, prune=0.25, identity=(), drift=1e-4, seed=0):
    """Per-block dense M (K+1, N+1), R (N+1, K+1), t (N+1,) as the official builder makes
    them (R = pinv(M)), then drifted as by dense finetuning; the structures built."""
    g = torch.Generator().manual_seed(seed)
    n = GRID[0] * GRID[1]
    units, structures = {}, {}
    for i in range(depth):
        if i in identity:
            s = pm.identity_structure(GRID)
            m, t = torch.eye(n + 1), torch.ones(n + 1)
            r = m.clone()
        else:
            scores = 0.5 + 0.5 * torch.rand(n, generator=g)
            s = pm.structure_from_scores(scores, GRID, keep, prune)
            m, t = pmd.to_dense_merge(s, 1), pmd.to_token_mask(s, 1)
            r = torch.linalg.pinv(m)
            m = m + drift * torch.randn(m.shape, generator=g)
            r = r + drift * torch.randn(r.shape, generator=g)
        units[i], structures[i] = (m, r, t), s
    return units, structures


# --------------------------------------------------------------------------------------------
# timm -> mmseg: parity
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Segmenter -> mmseg EncoderDecoder
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# official Prune-and-Merge -> compressed mmseg_pm (dense)
# --------------------------------------------------------------------------------------------
def pm_vit_source(depth=3, permute_block=1):
    """Classification pm-vit checkpoint: timm layout + blocks.i.attn.{merge_matrix,
    recover_matrix, token_mask, bias}, top-level channels (K_l + 1)."""
    src = tiny_timm('vit_tiny_patch16_224', depth=depth, num_classes=10)
    units, structures = official_units(depth, identity=(depth - 1,))
    sd = OrderedDict(src.state_dict())
    stored = {}
    for i, (m, r, t) in units.items():
        if i == permute_block:  # merged tokens out of raster order: the converter re-orders
            perm = torch.cat([torch.zeros(1, dtype=torch.long),
                              1 + torch.randperm(m.shape[0] - 1)])
            m, r = m[perm], r[:, perm]
        stored[i] = (m, r, t)
        sd[f'blocks.{i}.attn.merge_matrix'] = m
        sd[f'blocks.{i}.attn.recover_matrix'] = r
        sd[f'blocks.{i}.attn.token_mask'] = t
        sd[f'blocks.{i}.attn.bias'] = torch.log(m.sum(1).clamp_min(1e-6).sqrt())
    checkpoint = dict(model=sd, channels=[m.shape[0] for m, _, _ in units.values()],
                      epoch=59, args=argparse.Namespace(merge_list=list(range(depth))))
    return checkpoint, src, stored, structures


def test_pm_vit_round_trip():
    depth = 3
    checkpoint, src, stored, structures = pm_vit_source(depth)
    assert detect_format(checkpoint['model']) == 'pm_vit'
    report = ConversionReport()
    converted = convert_pm_official(checkpoint, report=report)
    assert 'blocks.0.attn.bias' in report.dropped
    assert any('re-ordered' in n for n in report.notes)
    record = pm_structure_from_state_dict(converted)
    assert record['pm_cfg']['mode'] == 'layer' and record['pm_cfg']['layers'] == [0, 1, 2]
    for i, s in structures.items():  # the structure is read back off the drifted support
        assert converted[f'backbone.pm.{i}.assign'].tolist() == s.assign.tolist()
        assert converted[f'backbone.pm.{i}.centers'].tolist() == s.centers.tolist()
        assert torch.equal(converted[f'backbone.pm.{i}.token_mask'], stored[i][2])
    assert torch.equal(converted['backbone.pm.0.merge_matrix'], stored[0][0])  # kept exactly
    model = our_backbone(num_layers=depth, pm_cfg=record['pm_cfg'])
    model.load_state_dict(strip(converted, 'backbone.'), strict=True)
    assert model.is_compressed and model.structure_summary() == record
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ref = encoder_tokens(src, x, {i: (i, m, r, t) for i, (m, r, t) in stored.items()})
        out = model(x)[0]
    ref = ref[:, 1:].reshape(2, *GRID, EMBED).permute(0, 3, 1, 2)
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize('attn_level', [True, False])
def test_pm_segmenter_span_round_trip(attn_level):
    depth, (a, b) = 4, (1, 2)
    checkpoint, encoder, dec = segmenter_source(depth=depth)
    units, structures = official_units(depth, keep=0.5, prune=0.0)
    m, r, t = units[a]
    sd = checkpoint['model']
    lvl = 'attn.' if attn_level else ''
    sd[f'encoder.blocks.{a}.{lvl}merge_matrix'] = m
    sd[f'encoder.blocks.{a}.{lvl}recover_matrix'] = torch.linalg.pinv(m)  # superseded
    sd[f'encoder.blocks.{b}.{lvl}recover_matrix'] = r
    if attn_level:
        sd[f'encoder.blocks.{a}.{lvl}token_mask'] = t
    n1 = m.shape[1]
    checkpoint.update(merged_tokens=[n1, m.shape[0], n1, n1], merge_list=[a], recover_list=[b])
    assert detect_format(sd) == 'pm_segmenter'
    report = ConversionReport()
    converted = convert_pm_official(checkpoint, report=report)
    assert f'encoder.blocks.{a}.{lvl}recover_matrix' in report.dropped
    record = pm_structure_from_state_dict(converted, trainable=False)
    assert record['pm_cfg']['mode'] == 'span' and record['pm_cfg']['spans'] == [(a, b)]
    assert record['units'][0]['num_groups'] == structures[a].num_groups
    seg = segmenter_mmseg(depth=depth, pm_cfg=record['pm_cfg'])
    seg.load_state_dict(converted, strict=True)
    assert seg.backbone.structure_summary() == record
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ref = dec(encoder_tokens(encoder, x, {a: (b, m, r, torch.ones(n1))})[:, 1:], GRID)
        out = seg.decode_head(seg.backbone(x))
    assert (out - ref).abs().max() <= 1e-4


def test_pm_segmenter_published_layout_merges_and_recovers_in_one_block():
    """As published, PM-Segmenter never sets R in the recover block (method.md §7.1): the merge
    block recovers within itself, so the unit is (a, a) whatever recover_list says."""
    depth, a = 3, 1
    checkpoint, encoder, dec = segmenter_source(depth=depth)
    m, r, t = official_units(depth, prune=0.0)[0][a]
    checkpoint['model'].update({f'encoder.blocks.{a}.attn.merge_matrix': m,
                                f'encoder.blocks.{a}.attn.recover_matrix': r})
    checkpoint.update(merged_tokens=[17, m.shape[0], 17], merge_list=[a], recover_list=[2])
    report = ConversionReport()
    converted = convert_pm_official(checkpoint, report=report)
    assert any('merges and recovers within itself' in n for n in report.notes)
    record = pm_structure_from_state_dict(converted, trainable=False)
    assert record['pm_cfg']['mode'] == 'layer' and record['pm_cfg']['layers'] == [a]
    seg = segmenter_mmseg(depth=depth, pm_cfg=record['pm_cfg'])
    seg.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        ref = dec(encoder_tokens(encoder, x, {a: (a, m, r, torch.ones(17))})[:, 1:], GRID)
        assert (seg.decode_head(seg.backbone(x)) - ref).abs().max() <= 1e-4


def test_pm_official_errors():
    checkpoint, *_ = pm_vit_source(depth=2, permute_block=None)
    bad = dict(checkpoint, channels=[5, 5])
    with pytest.raises(PMStructureError, match='channels'):
        convert_pm_official(bad)
    # a merged token that no patch column attributes to its row
    m, r, t = official_units(1)[0][0]
    m = m.clone()
    m[1, 1:] = 0
    with pytest.raises(PMStructureError, match='drifted'):
        structure_from_dense(m, r, t)
    with pytest.raises(PMStructureError, match='recover matrix has shape'):
        structure_from_dense(m, r[:-1], t)
    with pytest.raises(CheckpointFormatError, match='not an official Prune-and-Merge'):
        convert_pm_official(tiny_timm().state_dict())


# --------------------------------------------------------------------------------------------
# formats and the pretrained loader
# --------------------------------------------------------------------------------------------
def test_detect_format_and_unknown_layout():
    sd = tiny_timm().state_dict()
    assert detect_format(sd) == 'timm'
    mm = convert_timm_vit(sd)
    assert detect_format(mm) == 'mmseg'
    assert detect_format({'backbone.' + k: v for k, v in mm.items()}) == 'mmseg_segmentor'
    with pytest.raises(CheckpointFormatError) as e:
        detect_format({'foo.weight': torch.zeros(1), 'bar.bias': torch.zeros(1)})
    assert 'foo.weight' in str(e.value) and 'timm' in str(e.value) and 'segmenter' in str(e.value)


def test_init_cfg_pretrained_timm_file(tmp_path):
    src = tiny_timm('vit_small_patch16_384')
    path = str(tmp_path / 'vit_small_timm.pth')
    torch.save(src.state_dict(), path)  # a raw timm file, as downloaded from the hub
    model = MODELS.build(dict(type='PruneMergeViT', img_size=(96, 96), patch_size=16,
                              embed_dims=EMBED, num_layers=2, num_heads=HEADS, final_norm=True,
                              patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6),
                              pm_cfg=dict(mode='layer'),
                              init_cfg=dict(type='Pretrained', checkpoint=path)))
    model.init_weights()
    expected = convert_timm_vit(src.state_dict(), grid_size=(6, 6))
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert state['pos_embed'].shape == (1, 37, EMBED)
    # the same weights as a Hugging Face hub file (model.safetensors)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / 'model.safetensors'))
    other = our_backbone(img_size=96)
    load_pretrained_backbone(other, str(tmp_path / 'model.safetensors'))
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in expected.items())


def test_shipped_config_pretrained_timm_file(tmp_path):
    """``model.pretrained`` of a shipped Segmenter config (patch_bias=False, as mmseg's)."""
    src = tiny_timm('vit_small_patch16_384')
    path = str(tmp_path / 'timm.pth')
    torch.save(dict(model=src.state_dict()), path)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'segmenter_vit-s_ade20k.py'))
    cfg.model.pretrained = path
    cfg.model.data_preprocessor.size = (IMG, IMG)
    cfg.model.backbone.update(type='PruneMergeViT', img_size=(IMG, IMG), embed_dims=EMBED,
                              num_heads=HEADS, num_layers=2, pm_cfg=dict(mode='layer'))
    cfg.model.decode_head.update(in_channels=EMBED, channels=EMBED, embed_dims=EMBED,
                                 num_heads=HEADS)
    seg = MODELS.build(cfg.model)
    seg.init_weights()
    assert torch.equal(seg.backbone.layers[1].attn.attn.in_proj_weight,
                       src.blocks[1].attn.qkv.weight)
    report = load_pretrained_backbone(seg.backbone, path)
    assert 'patch_bias=False' in report.dropped['patch_embed.proj.bias']
    assert 'patch_embed.proj.bias' not in report.renamed


def test_load_pretrained_other_formats(tmp_path):
    # mmseg backbone file (timm2mmseg output) and a segmentor checkpoint with heads
    src = tiny_timm()
    mm = convert_timm_vit(src.state_dict())
    torch.save(dict(state_dict=mm, meta={}), tmp_path / 'mmseg.pth')
    model = our_backbone()
    load_pretrained_backbone(model, str(tmp_path / 'mmseg.pth'))
    assert torch.equal(model.cls_token, mm['cls_token'])
    checkpoint, encoder, _ = segmenter_source()
    torch.save(checkpoint, tmp_path / 'segmenter.pth')
    model = our_backbone()
    report = load_pretrained_backbone(model, str(tmp_path / 'segmenter.pth'))
    assert torch.equal(model.ln1.weight, encoder.norm.weight)
    assert 'decoder.cls_emb' in report.dropped and 'decoder.cls_emb' not in report.renamed
    # a compressed checkpoint (official PM) into a backbone with the matching dense pm_cfg
    pm_ckpt, *_ = pm_vit_source(depth=3)
    torch.save(pm_ckpt, tmp_path / 'pm_vit.pth')
    record = pm_structure_from_state_dict(convert_pm_official(pm_ckpt))
    model = our_backbone(num_layers=3, pm_cfg=record['pm_cfg'])
    load_pretrained_backbone(model, str(tmp_path / 'pm_vit.pth'))
    assert model.is_compressed
    with torch.no_grad():
        assert model(torch.randn(1, 3, IMG, IMG))[0].shape == (1, EMBED, *GRID)


def test_load_pretrained_errors(tmp_path):
    # shape mismatch: ViT "B" weights (embed 64) into a ViT "S" config (embed 32)
    path = str(tmp_path / 'wide.pth')
    torch.save(tiny_timm(embed_dim=64).state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as e:
        load_pretrained_backbone(our_backbone(), path)
    msg = str(e.value)
    assert 'cls_token: checkpoint (1, 1, 64) vs model (1, 1, 32)' in msg
    assert 'embed_dims=64' in msg
    # more layers than the model: unexpected keys, nothing silently dropped
    path = str(tmp_path / 'deep.pth')
    torch.save(tiny_timm(depth=3).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match='unexpected key.*layers.2'):
        load_pretrained_backbone(our_backbone(), path)
    # unknown key layout
    path = str(tmp_path / 'unknown.pth')
    torch.save({'net.conv1.weight': torch.zeros(1)}, path)
    with pytest.raises(CheckpointFormatError, match='unrecognised.*net.conv1.weight'):
        load_pretrained_backbone(our_backbone(), path)
    # not a checkpoint at all
    (tmp_path / 'garbage.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointFormatError, match='cannot read'):
        load_pretrained_backbone(our_backbone(), str(tmp_path / 'garbage.pth'))
    # missing file, also through init_cfg
    missing = str(tmp_path / 'vit_small_p16_384.pth')
    with pytest.raises(FileNotFoundError, match='not found.*init_cfg=None'):
        load_pretrained_backbone(our_backbone(), missing)
    model = our_backbone(init_cfg=dict(type='Pretrained', checkpoint=missing))
    with pytest.raises(FileNotFoundError, match='vit_small_p16_384.pth'):
        model.init_weights()
    # a compressed checkpoint into a backbone without units
    pm_ckpt, *_ = pm_vit_source(depth=2, permute_block=None)
    torch.save(pm_ckpt, tmp_path / 'pm.pth')
    with pytest.raises(PMStructureError, match='pm_cfg'):
        load_pretrained_backbone(our_backbone(), str(tmp_path / 'pm.pth'))


# --------------------------------------------------------------------------------------------
# the scripts
# --------------------------------------------------------------------------------------------
def test_converter_scripts(tmp_path, capsys):
    src = tiny_timm('deit_tiny_distilled_patch16_224', img_size=48)
    torch.save(dict(model=src.state_dict()), tmp_path / 'deit.pth')
    dst = tmp_path / 'out' / 'deit_mmseg.pth'
    assert load_tool('timm2mmseg').main([str(tmp_path / 'deit.pth'), str(dst),
                                         '--img-size', '64', '64']) == 0
    text = capsys.readouterr().out
    assert 'dist_token' in text and 'resampled 3x3 -> 4x4' in text and 'saved' in text
    out = torch.load(dst, weights_only=False)
    our_backbone().load_state_dict(out['state_dict'], strict=True)

    checkpoint, _, _ = segmenter_source()
    torch.save(checkpoint, tmp_path / 'seg.pth')
    assert load_tool('segmenter2mmseg').main([str(tmp_path / 'seg.pth'),
                                              str(tmp_path / 'seg_mmseg.pth')]) == 0
    out = torch.load(tmp_path / 'seg_mmseg.pth', weights_only=False)
    segmenter_mmseg().load_state_dict(out['state_dict'], strict=True)

    pm_ckpt, *_ = pm_vit_source(depth=3)
    torch.save(pm_ckpt, tmp_path / 'pm.pth')
    assert load_tool('pm_official2mmseg_pm').main(
        [str(tmp_path / 'pm.pth'), str(tmp_path / 'pm_mmseg.pth'), '--structure-json',
         str(tmp_path / 'pm.json')]) == 0
    text = capsys.readouterr().out
    assert 'pm_cfg' in text and 'representation' in text
    out = torch.load(tmp_path / 'pm_mmseg.pth', weights_only=False)
    structure = out['meta']['pm_structure']
    model = our_backbone(num_layers=3, pm_cfg=structure['pm_cfg'])
    model.load_state_dict(strip(out['state_dict'], 'backbone.'), strict=True)
    assert osp.isfile(tmp_path / 'pm.json')

    # bad input: one line on stderr, exit code 2
    tool = load_tool('timm2mmseg')
    for argv, msg in [([str(tmp_path / 'seg.pth'), str(tmp_path / 'x.pth')],
                       'segmenter2mmseg.py'),
                      ([str(tmp_path / 'nope.pth'), str(tmp_path / 'x.pth')], 'not found')]:
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: tool.main(argv))
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith('error: ') and msg in err and '\n' not in err
    assert not osp.exists(tmp_path / 'x.pth')


def test_converter_cli_exit_code(tmp_path):
    from conftest import run_tool
    torch.save({'net.conv1.weight': torch.zeros(1)}, tmp_path / 'unknown.pth')
    proc = run_tool('tools/model_converters/pm_official2mmseg_pm.py',
                    str(tmp_path / 'unknown.pth'), str(tmp_path / 'out.pth'), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith('error: unrecognised checkpoint key layout')
    assert not osp.exists(tmp_path / 'out.pth')
