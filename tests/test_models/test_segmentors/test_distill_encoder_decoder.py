import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmengine.structures import PixelData

import mmseg_pm  # noqa: F401
from mmseg_pm.models.segmentors import distill_kl_loss
from mmseg_pm.functional import prune_merge as pm


def test_kd_loss_zero_when_equal_and_normalisation():
    logits = torch.randn(2, 5, 3, 4)
    assert distill_kl_loss(logits, logits.clone()).abs() < 1e-7
    other = torch.randn(2, 5, 3, 4)
    numel = distill_kl_loss(other, logits, temperature=2.0, normalize='numel')
    pixel = distill_kl_loss(other, logits, temperature=2.0, normalize='pixel')
    assert torch.allclose(pixel, numel * 5)
    assert numel > 0


def _tiny_distill_model():
    cfg = Config.fromfile('configs/demo/pm_segmenter_vit-t_ade20k-sample-256.py')
    m = cfg.model
    m.data_preprocessor.size = (32, 32)
    m.backbone.update(img_size=(32, 32), embed_dims=16, num_heads=2, num_layers=2)
    m.decode_head.update(in_channels=16, channels=16, embed_dims=16, num_heads=2, num_layers=1,
                         num_classes=4)
    m.test_cfg = dict(mode='whole')
    return MODELS.build(m)


def _batch():
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, 32, 32)))
        s.set_metainfo(dict(img_shape=(32, 32), pad_shape=(32, 32), ori_shape=(32, 32)))
        samples.append(s)
    return torch.randn(2, 3, 32, 32), samples


def test_distillation_grads_reach_only_the_student():
    model = _tiny_distill_model()
    model.init_weights()
    model.train()
    model.init_teacher()
    teacher = model.teacher
    assert 'teacher' not in ''.join(model.state_dict().keys())
    inputs, samples = _batch()
    model.eval()  # no drop-path, as the teacher
    losses = model.loss(inputs, samples)
    assert losses['loss_kd'].abs() < 1e-5  # student == teacher (up to float rounding x T^2)
    model.train()
    bb = model.backbone
    bb.install_structures({u.start: pm.structure_from_scores(torch.rand(4), (2, 2), 0.5, 0.25)
                           for u in bb.pm_units})
    losses = model.loss(inputs, samples)
    assert losses['loss_kd'] > 0
    losses['loss_kd'].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert not teacher.training and not teacher.backbone.is_compressed
