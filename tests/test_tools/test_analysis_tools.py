"""Efficiency tools: FLOPs (hand count), benchmark JSON, ONNX export, token visualisation.

Tiny models (embed_dims 32, 2 heads, 2 layers, 64 x 64 crop: a 4 x 4 patch grid, N = 16) derived
from configs/demo/pm_segmenter_vit-t_ade20k-sample-256.py with a linear decode head (FCNHead,
num_convs=0), on the real ADE20K sample.
"""
import json
import os.path as osp
import re

import pytest
import torch
from conftest import REPO, run_tool
from mmengine.config import Config

import mmseg_pm  # noqa: F401
from mmseg_pm.analysis import count_flops, install_uniform_structure, load_segmentor
from mmseg_pm.models.utils import prune_merge as pm
from mmseg_pm.utils import UserError

DEMO = osp.join(REPO, 'configs', 'demo', 'pm_segmenter_vit-t_ade20k-sample-256.py')
C, HEADS, LAYERS, CROP, CLASSES = 32, 2, 2, 64, 150
N, P = (CROP // 16)**2, 1  # 16 patch tokens, 1 CLS token


def tiny_cfg(data_root=None, representation='sparse'):
    """The demo config at tiny sizes: 2-layer ViT (C 32, 2 heads), 64 x 64 crop, FCN head."""
    cfg = Config.fromfile(DEMO)
    crop = (CROP, CROP)
    cfg.model.data_preprocessor.size = crop
    cfg.model.backbone.update(img_size=crop, embed_dims=C, num_heads=HEADS, num_layers=LAYERS)
    cfg.model.backbone.pm_cfg.representation = representation
    cfg.model.decode_head = dict(
        type='FCNHead', in_channels=C, channels=C, num_convs=0, concat_input=False,
        dropout_ratio=0.0, num_classes=CLASSES, norm_cfg=dict(type='BN', requires_grad=True),
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
    cfg.model.test_cfg = dict(mode='slide', crop_size=crop, stride=(48, 48))
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(256, 64), keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs')
    ]
    cfg.test_pipeline = pipeline
    if data_root:
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[key].dataset.data_root = data_root
        cfg.val_dataloader.dataset.pipeline = pipeline
        cfg.test_dataloader.dataset.pipeline = pipeline
    return cfg


def hand_flops(tokens_per_layer):
    """mmengine's count of the tiny segmentor (one multiply-add = one FLOP, batch 1).

    Counted: conv (patch embedding, 1x1 classifier), linear (qkv, proj, fc1, fc2), bmm (the two
    attention matmuls of nn.MultiheadAttention), layer_norm (5 FLOPs per element with affine).
    Not counted: softmax, GELU, adds, scaling of q, the reshape of the tokens to the grid.
    """
    patch_embed = (C * 3 * 16 * 16) * N            # conv: prod(weight) * output positions
    classifier = C * CLASSES * N                   # 1x1 conv_seg on the 4 x 4 grid
    blocks = 0
    for length in tokens_per_layer:                # length = P + tokens the block runs on
        blocks += 2 * 5 * length * C               # LN1, LN2
        blocks += length * C * 3 * C               # qkv
        blocks += 2 * length * length * C          # q @ k^T and attn @ v over all heads
        blocks += length * C * C                   # out proj
        blocks += 2 * length * C * 4 * C           # MLP fc1 + fc2 (mlp_ratio 4)
    final_norm = 5 * (P + N) * C                   # norm after the last block (full tokens)
    return patch_embed + blocks + final_norm, classifier


def compressed_model(keep=0.5, prune=0.25, representation='sparse'):
    model = load_segmentor(tiny_cfg(representation=representation))
    label = install_uniform_structure(model, keep, prune, seed=0)
    return model, label


@pytest.fixture(scope='module')
def tiny_files(tmp_path_factory, sample_root):
    """Config file + compressed / uncompressed checkpoints of the tiny model."""
    from mmseg.datasets import ADE20KDataset
    out = tmp_path_factory.mktemp('tiny')
    cfg = tiny_cfg(sample_root)
    cfg.dump(str(out / 'tiny.py'))
    model = load_segmentor(cfg)
    meta = dict(dataset_meta=dict(ADE20KDataset.METAINFO))
    torch.save(dict(state_dict=model.state_dict(), meta=meta), out / 'plain.pth')
    install_uniform_structure(model, 0.5, 0.25, seed=0)
    torch.save(dict(state_dict=model.state_dict(), meta=meta), out / 'pm.pth')
    return dict(config=str(out / 'tiny.py'), pm=str(out / 'pm.pth'),
                plain=str(out / 'plain.pth'), dir=out, data_root=sample_root)


# --------------------------------------------------------------------------------------------
def test_flops_equal_hand_count_and_mmengine():
    from mmengine.analysis import get_model_complexity_info
    model = load_segmentor(tiny_cfg())
    result = count_flops(model)
    backbone, head = hand_flops([P + N] * LAYERS)
    assert result['input_shape'] == [1, 3, CROP, CROP]
    assert result['flops']['backbone'] == backbone
    assert result['flops']['decode_head'] == head
    assert result['flops']['total'] == backbone + head == 938400
    assert not result['compressed'] and result['units'][0]['active'] is False
    assert result['flops_mr_counted']['total'] == result['flops_mr_not_counted']['total'] \
        == result['flops']['total']
    info = get_model_complexity_info(model, inputs=(torch.randn(1, 3, CROP, CROP), ),
                                     show_table=False, show_arch=False)
    assert info['flops'] == result['flops']['total']
    assert result['params']['total'] == sum(p.numel() for p in model.parameters())


def test_compressed_flops_drop_by_the_expected_amount():
    model, label = compressed_model(keep=0.5, prune=0.25)
    result = count_flops(model, structure=label)
    k, pruned = int(N * 0.5), int(N * 0.25)
    backbone, head = hand_flops([P + k] * LAYERS)
    assert result['compressed'] and result['structure'].startswith('random uniform')
    assert result['flops']['total'] == backbone + head
    full, _ = hand_flops([P + N] * LAYERS)
    assert full - backbone == sum(10 * C * (P + N - P - k) + 12 * C * C * (N - k)
                                  + 2 * C * ((P + N)**2 - (P + k)**2) for _ in range(LAYERS))
    # sparse M/R are not seen by the counter: merge (N - pruned) * C + reconstruct N * C per unit
    mr = LAYERS * ((N - pruned) * C + N * C)
    assert result['mr_flops'] == mr
    assert result['flops_mr_not_counted']['total'] == backbone + head
    assert result['flops_mr_counted']['total'] == backbone + head + mr
    assert result['flops_mr_counted']['backbone'] == backbone + mr
    for u in result['units']:
        assert (u['N'], u['K'], u['pruned'], u['merged'], u['tokens']) == \
            (N, k, pruned, N - k - pruned, P + k)
    # dense: the counter sees the matmuls, 2 (P + K)(P + N) C per unit
    dense, _ = compressed_model(keep=0.5, prune=0.25, representation='dense')
    rd = count_flops(dense)
    dense_mr = LAYERS * 2 * (P + k) * (P + N) * C
    assert rd['mr_flops'] == dense_mr
    assert rd['flops']['total'] == backbone + head + dense_mr
    assert rd['flops_mr_not_counted']['total'] == backbone + head
    assert rd['flops_mr_counted']['total'] == rd['flops']['total']


def test_sparse_ops_fast_paths_match_dense():
    """merge / reconstruct (in-place inference path, autograd path) = the dense M x, R z."""
    s = pm.structure_from_scores(torch.rand(64), (8, 8), 0.4, 0.3)
    kept = (s.assign >= 0).float()
    mw, rw = s.merge_weight * kept, s.restore_weight * kept
    m, r, t = pm.to_dense_merge(s, 1), pm.to_dense_restore(s, 1), pm.to_token_mask(s, 1)
    x = torch.randn(3, 65, 16)
    z_ref = pm.merge_tokens_dense(x, m)
    y_ref = pm.reconstruct_tokens_dense(z_ref, x, r, t)
    with torch.no_grad():
        z = pm.merge_tokens(x, s.assign, mw, s.num_groups, 1)
        y = pm.reconstruct_tokens(z, x, s.assign, rw, 1, s.assign < 0)
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    xg, mwg, rwg = x.clone().requires_grad_(), mw.clone().requires_grad_(), \
        rw.clone().requires_grad_()
    yg = pm.reconstruct_tokens(pm.merge_tokens(xg, s.assign, mwg, s.num_groups, 1), xg,
                               s.assign, rwg, 1)
    torch.testing.assert_close(yg.detach(), y, atol=0, rtol=0)
    yg.square().sum().backward()
    md, rd = m.clone().requires_grad_(), r.clone().requires_grad_()
    xd = x.clone().requires_grad_()
    pm.reconstruct_tokens_dense(pm.merge_tokens_dense(xd, md), xd, rd, t).square().sum() \
        .backward()
    torch.testing.assert_close(xg.grad, xd.grad, atol=1e-4, rtol=1e-5)
    kept_idx = torch.nonzero(s.assign >= 0).flatten()
    torch.testing.assert_close(mwg.grad[kept_idx], md.grad[1 + s.assign[kept_idx], 1 + kept_idx],
                               atol=1e-4, rtol=1e-5)


def test_get_flops_tool(tiny_files, tmp_path):
    out = tmp_path / 'flops.json'
    proc = run_tool('tools/analysis_tools/get_flops.py', tiny_files['config'], tiny_files['pm'],
                    '--out', str(out))
    assert 'one multiply-add = one FLOP' in proc.stdout
    assert 'M/R counted' in proc.stdout and 'M/R not counted' in proc.stdout
    assert re.search(r'\| 0 \| 16 \| 8 \| 4 \| 4 \| 9 \|', proc.stdout), proc.stdout
    result = json.loads(out.read_text())
    backbone, head = hand_flops([P + 8] * LAYERS)
    assert result['structure'] == 'checkpoint' and result['compressed']
    assert result['flops_mr_not_counted']['total'] == backbone + head


def test_benchmark_writes_every_field(tiny_files, tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool('tools/analysis_tools/benchmark.py', tiny_files['config'], tiny_files['pm'],
                    '--baseline', tiny_files['config'], tiny_files['plain'], '--batch-sizes',
                    '1', '2', '--warmup', '1', '--iters', '2', '--repeat', '2', '--mr-iters',
                    '1', '--threads', '1', '--out', str(out))
    assert 'Protocol:' in proc.stdout and '| model |' in proc.stdout
    result = json.loads(out.read_text())
    proto = result['protocol']
    for key in ('input_size', 'batch_sizes', 'precisions', 'device', 'threads', 'warmup',
                'iters', 'repeat', 'cpu', 'torch', 'data_root'):
        assert key in proto, key
    assert proto['input_size'] == [CROP, CROP] and proto['threads'] == 1
    assert len(result['rows']) == 4  # 2 models x 2 batch sizes
    for row in result['rows']:
        for key in ('name', 'role', 'batch', 'precision', 'latency_ms', 'throughput_img_s',
                    'speedup', 'gflops_mr_counted', 'gflops_mr_not_counted', 'gflops_ratio',
                    'efficiency', 'memory', 'structure', 'config', 'checkpoint'):
            assert row[key] is not None, key
        lat = row['latency_ms']
        assert lat['n'] == 4 and lat['q25'] <= lat['median'] <= lat['q75']
        assert row['throughput_img_s'] == pytest.approx(1e3 * row['batch'] / lat['median'])
        assert row['memory']['peak_mib'] > 0
    base = [r for r in result['rows'] if r['role'] == 'baseline']
    comp = [r for r in result['rows'] if r['role'] == 'compressed']
    assert all(r['speedup'] == 1 and r['gflops_ratio'] == 1 for r in base)
    assert all(r['mr_time'] is None for r in base)
    for r in comp:
        assert r['structure'] == 'checkpoint' and 0 < r['mr_time']['fraction'] < 1
        assert r['gflops_ratio'] > 1.2
        assert r['efficiency'] == pytest.approx(r['speedup'] / r['gflops_ratio'])


def test_benchmark_missing_data_root_is_a_user_error(tiny_files, tmp_path):
    from mmseg_pm.analysis.benchmark import benchmark_pair
    with pytest.raises(UserError, match='test data root not found'):
        benchmark_pair(tiny_files['config'], tiny_files['pm'], tiny_files['config'], None,
                       data_root=str(tmp_path / 'nowhere'), progress=False)
    with pytest.raises(UserError, match='holds no Prune-and-Merge structure'):
        benchmark_pair(tiny_files['config'], tiny_files['plain'], tiny_files['config'], None,
                       progress=False)


def test_onnx_export_matches_pytorch(tiny_files, tmp_path):
    out = tmp_path / 'tiny.onnx'
    proc = run_tool('tools/deployment/pytorch2onnx.py', tiny_files['config'], tiny_files['pm'],
                    '--out', str(out), '--image', _first_val_image(tiny_files['data_root']))
    assert out.is_file()
    diff = float(re.search(r'max abs diff ([0-9.e+-]+)', proc.stdout).group(1))
    assert diff < 1e-3, proc.stdout
    assert 'exported compressed segmentor' in proc.stdout


def _first_val_image(data_root):
    import os
    folder = osp.join(data_root, 'images', 'validation')
    return osp.join(folder, sorted(os.listdir(folder))[0])


def test_visualize_tokens_png_size(tiny_files, tmp_path):
    import matplotlib.image as mpimg
    out = tmp_path / 'tokens.png'
    run_tool('tools/visualize_tokens.py', tiny_files['config'], tiny_files['pm'],
             _first_val_image(tiny_files['data_root']), '--out', str(out), '--layers', '0', '1',
             '--panel-size', '200')
    h, w = mpimg.imread(str(out)).shape[:2]
    assert (w, h) == (200 * 3, 200 + 28)  # 2 units + the prediction


def test_visualize_tokens_refuses_a_checkpoint_without_structure(tiny_files, tmp_path):
    proc = run_tool('tools/visualize_tokens.py', tiny_files['config'], tiny_files['plain'],
                    _first_val_image(tiny_files['data_root']), '--out', str(tmp_path / 'x.png'),
                    check=False)
    assert proc.returncode == 2
    assert 'carries no Prune-and-Merge structure' in proc.stderr.strip().splitlines()[-1]
