"""Helpers of the converter tests: tiny random source models with the official key layouts
(timm, rstrudel/segmenter, pm-vit, PM-Segmenter), reference forwards and mmseg targets.

Every source checkpoint is built here; nothing is downloaded.
"""
import argparse
import importlib.util
import os
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import timm
import torch
from mmseg.registry import MODELS
from timm.models.vision_transformer import Block
from torch import nn

import mmseg_pm  # noqa: F401
from mmseg_pm.functional import prune_merge as pm
from mmseg_pm.functional import prune_merge_dense as pmd
from mmseg_pm.models import PruneMergeViT

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
EMBED, HEADS, IMG, GRID = 32, 2, 64, (4, 4)
TINY = dict(img_size=IMG, depth=2, embed_dim=EMBED, num_heads=HEADS)


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


def run_script(*args, cwd=REPO):
    """Run ``python <args>`` (a tool path first) in a subprocess; returns the CompletedProcess
    (text output), whatever its exit code."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=env)


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
    applied as the official code does (pm-vit ``tmvit.py``; PM-Segmenter
    ``segm/model/blocks.py``): ``z = M x`` before block a, ``y = R z + (1 - t) x`` after
    block b. Returns the normed tokens (B, 1 + N, C)."""
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
