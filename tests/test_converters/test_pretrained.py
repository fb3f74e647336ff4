"""``init_cfg=dict(type='Pretrained')`` of the backbones
(:func:`mmseg_pm.converters.pretrained.load_pretrained_backbone`)."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from mmseg_pm.converters.pm_official import convert_pm_official, pm_structure_from_state_dict
from mmseg_pm.converters.pretrained import load_pretrained_backbone
from mmseg_pm.converters.timm import convert_timm_vit
from mmseg_pm.errors import CheckpointFormatError, CheckpointMismatchError
from mmseg_pm.errors import StructureError as PMStructureError

from .utils import (EMBED, GRID, HEADS, IMG, REPO, our_backbone, pm_vit_source,
                    segmenter_source, tiny_timm)


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
