"""Checks of a whole run before MMEngine's Runner starts (mmseg_pm.engine.preflight)."""
import os.path as osp

import pytest
import torch

from mmseg_pm.compression import CompressSettings
from mmseg_pm.engine.preflight import (add_label_checks, build_model, check_compress_run,
                                       check_test_run, check_train_run,
                                       check_val_fits_structure)
from mmseg_pm.errors import ConfigError, FixedTokenCountError, UserError
from mmseg_pm.utils.preflight import read_config
from tests.utils import BASELINE, DEMO, REPO, load_state_dict, quiet


@pytest.fixture
def demo_cfg(sample_root, tmp_path):
    quiet()
    cfg = read_config(osp.join(REPO, DEMO), {'data_root': sample_root})
    cfg.work_dir = str(tmp_path / 'work')
    return cfg


def test_build_model_leaves_the_config_as_it_was(tmp_path):
    """mmseg's EncoderDecoder moves ``model.pretrained`` into the backbone config it is given:
    the pre-flight build must not do that to the config the Runner builds from again."""
    cfg = read_config(osp.join(REPO, BASELINE), {'model.pretrained': 'weights.pth'})
    before = cfg.model.to_dict()
    build_model(cfg)
    assert cfg.model.to_dict() == before and 'pretrained' not in cfg.model.backbone


def test_build_model_names_what_the_model_refuses(tmp_path):
    cfg = read_config(osp.join(REPO, DEMO), {'model.backbone.pm_cfg.mode': 'nope'})
    with pytest.raises(ConfigError):
        build_model(cfg)
    cfg = read_config(osp.join(REPO, DEMO), {'model.backbone.type': 'NoSuchViT'})
    with pytest.raises(UserError, match='cannot build the model of the config: KeyError'):
        build_model(cfg)


def test_check_train_run_returns_the_model_with_load_from(demo_cfg, demo_checkpoints):
    demo_cfg.load_from = demo_checkpoints['uncompressed']
    model = check_train_run(demo_cfg)
    expected = load_state_dict(demo_checkpoints['uncompressed'])
    key = 'backbone.layers.3.attn.attn.in_proj_weight'
    assert torch.equal(model.state_dict()[key], expected[key])
    assert not osp.exists(demo_cfg.work_dir)  # nothing written
    # the label check is in every pipeline
    for split in ('train', 'val', 'test'):
        types = [t['type'] for t in demo_cfg[f'{split}_dataloader'].dataset.pipeline]
        assert types[types.index('LoadAnnotations') + 1] == 'CheckLabelRange', split


def test_check_train_run_refuses_settings(demo_cfg, demo_checkpoints):
    demo_cfg.custom_hooks[0].keep_rate = 0.7
    demo_cfg.model.backbone.pm_cfg.keep_rate = 0.5  # deprecated place, another value
    with pytest.raises(ConfigError, match='keep_rate is set both on PMCompressHook'):
        check_train_run(demo_cfg)


def test_check_val_fits_structure(demo_cfg):
    backbone = build_model(demo_cfg).backbone
    check_val_fits_structure(demo_cfg, backbone)  # slide 256 in the 256 crop
    demo_cfg.model.test_cfg.crop_size = (320, 320)
    with pytest.raises(FixedTokenCountError, match=r'\(320, 320\) is larger than the 256x256'):
        check_val_fits_structure(demo_cfg, backbone)
    demo_cfg.val_cfg = None  # no validation loop: nothing to check
    check_val_fits_structure(demo_cfg, backbone)


def test_check_compress_run(demo_cfg, demo_checkpoints):
    demo_cfg.custom_hooks = []
    demo_cfg.load_from = demo_checkpoints['uncompressed']
    settings = check_compress_run(demo_cfg, dict(keep_rate=0.6, score_iters=2),
                                  dict(keep_rate=0.5, prune_rate=None))
    assert settings == CompressSettings(keep_rate=0.5, score_iters=2)  # command line wins
    demo_cfg.load_from = demo_checkpoints['compressed']
    with pytest.raises(UserError, match='compressed.pth is already compressed'):
        check_compress_run(demo_cfg, {}, {})
    demo_cfg.load_from = demo_checkpoints['uncompressed']
    with pytest.raises(ConfigError, match='keep_rate must be in'):
        check_compress_run(demo_cfg, {}, dict(keep_rate=2.0))


def test_check_test_run_structure_and_checkpoint(demo_cfg, demo_checkpoints, sample_root):
    check_test_run(demo_cfg, demo_checkpoints['compressed'])
    with pytest.raises(UserError, match='carries no Prune-and-Merge structure'):
        check_test_run(demo_cfg, demo_checkpoints['baseline'])
    baseline = read_config(osp.join(REPO, BASELINE), {'data_root': sample_root})
    with pytest.raises(UserError, match='backbone.pm.'):
        check_test_run(baseline, demo_checkpoints['compressed'])
    check_test_run(baseline, demo_checkpoints['baseline'])
    demo_cfg.model.test_cfg = dict(mode='whole')
    with pytest.raises(FixedTokenCountError, match='fixed token count'):
        check_test_run(demo_cfg, demo_checkpoints['compressed'])


def test_add_label_checks_uses_the_head_classes(demo_cfg):
    model = build_model(demo_cfg)
    add_label_checks(demo_cfg, model)
    step = demo_cfg.train_dataloader.dataset.pipeline[2]
    assert step == dict(type='CheckLabelRange', max_label=149)
