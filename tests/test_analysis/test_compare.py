"""The comparison package modules: evaluation (mIoU / agreement / KL), methods on the same
weights, settings and refusals, the table and the plot."""
import copy
import json
import os

import numpy as np
import pytest
import torch
from tests.utils import write_tiny_vit
from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import MODELS
from PIL import Image

from mmseg_pm.analysis.build import (build_segmentor, load_config, segmentor_cfg,
                                     variant_cfg)
from mmseg_pm.analysis.compare import CompareSettings, Comparison, row_key
from mmseg_pm.analysis.compare_report import (FIGURE_SIZE, compare_table, plot_comparison,
                                              sorted_rows)
from mmseg_pm.analysis.evaluate import (SegEvaluation, evaluate_segmentor, load_eval_data)
from mmseg_pm.analysis.knobs import method_knob
from mmseg_pm.analysis.methods import PM_REDUCER, MethodModel
from mmseg_pm.errors import ConfigError, UserError
from mmseg_pm.models.backbones import reduction_backbone


def tiny_segmenter():
    """64 x 64 crop (4 x 4 patches), 2 blocks, linear head: no data needed."""
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[0] * 3, std=[1] * 3),
        backbone=dict(type='VisionTransformer', img_size=(64, 64), patch_size=16,
                      embed_dims=32, num_layers=2, num_heads=2, final_norm=True),
        decode_head=dict(type='FCNHead', in_channels=32, channels=32, num_convs=0,
                         concat_input=False, num_classes=3, norm_cfg=None,
                         loss_decode=dict(type='CrossEntropyLoss')),
        test_cfg=dict(mode='whole'))


# -- evaluation ------------------------------------------------------------------------------
def test_miou_follows_iou_metric():
    g = torch.Generator().manual_seed(0)
    k, acc, metric = 5, SegEvaluation(5), IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=[str(i) for i in range(k)])
    for _ in range(3):
        label = torch.randint(0, k - 1, (20, 30), generator=g)  # class 4 never labelled
        label[:3] = 255
        pred = torch.randint(0, k, (20, 30), generator=g)
        acc.add(pred, label)
        metric.process({}, [dict(pred_sem_seg=dict(data=pred[None]),
                                 gt_sem_seg=dict(data=label[None]))])
    expected = metric.compute_metrics(metric.results)
    result = acc.result()
    assert result['miou'] == pytest.approx(float(expected['mIoU']), abs=0.005)
    assert result['aacc'] == pytest.approx(float(expected['aAcc']), abs=0.005)


def test_agreement_counts_labelled_pixels_and_kl_is_the_formula():
    acc = SegEvaluation(2)
    label = torch.tensor([[0, 1], [255, 1]])
    pred = torch.tensor([[0, 0], [1, 1]])
    ref = torch.tensor([[0, 1], [0, 1]], dtype=torch.int16)
    ref_logits = torch.tensor([[[[2.0]], [[0.0]]]])  # (1, K=2, 1, 1)
    logits = torch.tensor([[[[0.0]], [[1.0]]]])
    acc.add(pred, label, ref, [logits], [torch.log_softmax(ref_logits, 1)])
    r = acc.result()
    assert r['agreement'] == pytest.approx(2 / 3)  # the unlabelled pixel is left out
    p = torch.softmax(ref_logits.double(), 1).flatten()
    q = torch.softmax(logits.double(), 1).flatten()
    assert r['kl'] == pytest.approx(float((p * (p.log() - q.log())).sum()), rel=1e-6)
    with pytest.raises(ValueError, match='reference'):
        acc.add(pred, label, ref, [logits, logits], [ref_logits])


@pytest.fixture(scope='module')
def tiny_files(tmp_path_factory, sample_root):
    return write_tiny_vit(tmp_path_factory.mktemp('tiny'), sample_root)


def test_a_model_agrees_with_itself(tiny_files):
    config, checkpoint = tiny_files
    cfg = load_config(config)
    model = build_segmentor(variant_cfg(segmentor_cfg(cfg), 'plain'), checkpoint)
    data = load_eval_data(cfg, 2)
    assert len(data.samples) == 2 and len(data.classes) == 150
    first, ref = evaluate_segmentor(model, data, keep_reference=True, progress=False)
    again, _ = evaluate_segmentor(model, data, ref, progress=False)
    assert again['agreement'] == 1.0 and again['kl'] == 0.0
    assert again['miou'] == first['miou'] and first['agreement'] is None
    # slide inference of a 128 px crop over images resized to 128 px high: two windows each,
    # at the mask head's resolution (1/16)
    assert [w.shape[-2:] for w in ref.log_probs[0]] == [(8, 8)] * len(ref.log_probs[0])
    assert 'forward' not in vars(model.decode_head)  # the capture is undone


# -- methods on the same weights --------------------------------------------------------------
def test_replaced_reducer_equals_a_built_one():
    base = tiny_segmenter()
    torch.manual_seed(0)
    built = MODELS.build(variant_cfg(base, 'reduced', dict(type='ToMe', r=[2, 2])))
    built.init_weights()
    swapped = MODELS.build(variant_cfg(base, 'reduced', dict(type='ToMe', r=[1, 0])))
    swapped.load_state_dict(built.state_dict())
    reduction_backbone(swapped).replace_reducer(dict(type='ToMe', r=[2, 2]))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(built.eval()(x, mode='tensor'), swapped.eval()(x, mode='tensor'))
    plain = MODELS.build(variant_cfg(base, 'plain'))
    with pytest.raises(ConfigError, match='replace_reducer'):
        reduction_backbone(plain).replace_reducer(dict(type='ToMe', r=1))


def test_prune_merge_keep_rate_sets_the_structure_and_the_cost():
    model = build_segmentor(variant_cfg(tiny_segmenter(), 'reduced', PM_REDUCER))
    knob = method_knob('pm', 2, 16, prune_rate=0.1)
    scores = {i: torch.rand(16, dtype=torch.float64) for i in range(2)}
    mm = MethodModel(knob, model, torch.randn(1, 3, 64, 64),
                     pm=dict(scores=scores, prune_rate=0.1, score_iters=1))
    costs = [mm.gflops(k) for k in (0.25, 0.5, 0.9)]
    assert costs[0] < costs[1] < costs[2]
    info = mm.configure(0.5)
    assert sum(u['K'] for u in info['pm']['units']) == 2 * int(16 * 0.5)
    assert info['pm']['prune_rate'] == 0.1 and mm.counts[0.5]['tokens'] is not None


# -- settings and refusals --------------------------------------------------------------------
@pytest.mark.parametrize('kwargs, message', [
    (dict(budgets=[1.2]), 'fractions of the uncompressed GFLOPs in (0, 1)'),
    (dict(methods=['dynamicvit']), '--methods takes'),
    (dict(val_images=0), '--val-images must be an integer >= 1'),
    (dict(batch_size=0), '--batch-size'),
    (dict(flops_images=0), '--flops-images must be an integer >= 1'),
    (dict(tolerance=0.0), '--tolerance'),
])
def test_settings_are_checked(kwargs, message):
    with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
        CompareSettings(config='c.py', checkpoint='c.pth', out_dir='out', **kwargs)


@pytest.mark.parametrize('flops_images, batch_size, expected', [(2, 1, 2), (1, 3, 3)])
def test_only_the_flops_images_are_kept_at_the_crop(tiny_files, tmp_path, flops_images,
                                                    batch_size, expected):
    """Every validation image is evaluated, but only the first --flops-images (or a latency
    batch, if larger) are held pre-processed at the crop."""
    config, checkpoint = tiny_files
    c = Comparison(CompareSettings(config, checkpoint, str(tmp_path / 'out'), val_images=4,
                                   flops_images=flops_images, batch_size=batch_size,
                                   progress=False))
    c.prepare()
    assert len(c.data.samples) == 4
    assert c.images.shape[0] == expected


def test_refusals_before_any_work(tiny_files, tmp_path):
    config, checkpoint = tiny_files
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'compare.json').write_text('{}')
    with pytest.raises(UserError, match='--resume continues it'):
        Comparison(CompareSettings(config, checkpoint, str(out))).prepare()
    doc = dict(format='mmseg_pm.compare_methods/1', protocol=dict(
        settings=CompareSettings(config, checkpoint, str(out), batch_size=2).resume_key()))
    (out / 'compare.json').write_text(json.dumps(doc))
    with pytest.raises(UserError, match='batch_size=2, this run has 1'):
        Comparison(CompareSettings(config, checkpoint, str(out), resume=True)).prepare()
    assert os.listdir(out) == ['compare.json']
    # a backbone that is not a plain ViT: one line naming the supported ones
    resnet = tmp_path / 'resnet.py'
    resnet.write_text(f"_base_ = [{config!r}]\nmodel = dict(backbone=dict(_delete_=True, "
                      f"type='ResNetV1c', depth=18))\n")
    with pytest.raises(ConfigError, match='supports plain ViT backbones: VisionTransformer'):
        Comparison(CompareSettings(str(resnet), checkpoint, str(tmp_path / 'new'))).prepare()
    assert not (tmp_path / 'new').exists()


# -- report ----------------------------------------------------------------------------------
def synthetic_doc():
    rows = [dict(key='uncompressed', method='uncompressed', budget=1.0, status='ok',
                 gflops=10.0, gflops_fraction=1.0, miou=40.0, agreement=1.0, kl=0.0,
                 latency_ms=dict(median=100.0), speedup=1.0)]
    for m, shift in (('pm', 1.0), ('tome', 2.0)):
        for b in (0.8, 0.6):
            rows.append(dict(key=row_key(m, b), method=m, budget=b, status='ok',
                             knob=dict(name='keep_rate', value=b - 0.1), gflops=10 * b,
                             gflops_fraction=b, miou=40 * b - shift, agreement=b,
                             kl=1 - b, latency_ms=dict(median=100 * b), speedup=1 / b))
    rows.append(dict(key='algm@0.6', method='algm', budget=0.6, status='unreachable',
                     reason='threshold=-1 (the strongest reduction) still gives 7 GFLOPs'))
    protocol = dict(crop=[512, 512], config='/x/segmenter.py', val=dict(images=8),
                    latency=dict(batch=1, device='cpu', precision='fp32'))
    return dict(protocol=protocol, rows=rows, uncompressed_gflops=10.0)


@pytest.mark.parametrize('metric', ['miou', 'agreement'])
def test_plot_is_a_non_blank_image_of_the_documented_size(tmp_path, metric):
    path = plot_comparison(synthetic_doc(), str(tmp_path / 'compare.png'), metric)
    with Image.open(path) as im:
        assert im.size == FIGURE_SIZE
        assert np.asarray(im.convert('L')).var() > 0
    assert os.listdir(tmp_path) == ['compare.png']  # no temporary file left


def test_plot_refuses_an_unknown_metric(tmp_path):
    with pytest.raises(ValueError, match='metric'):
        plot_comparison(synthetic_doc(), str(tmp_path / 'x.png'), 'accuracy')


def test_table_rows_and_order():
    doc = synthetic_doc()
    shuffled = copy.deepcopy(doc['rows'])[::-1]
    assert [r['key'] for r in sorted_rows(shuffled)][:3] == ['uncompressed', 'pm@0.8', 'pm@0.6']
    table = compare_table(doc['rows'])
    lines = table.splitlines()
    assert len(lines) == 2 + len(doc['rows'])
    assert 'unreachable: threshold=-1' in table and 'keep_rate=0.7' in table
