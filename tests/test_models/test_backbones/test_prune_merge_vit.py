import copy

import pytest
import torch
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

import mmseg_pm  # noqa: F401
from mmseg_pm.errors import ConfigError, FixedTokenCountError
from mmseg_pm.errors import StructureError as PMStructureError
from mmseg_pm.functional import prune_merge as pm
from mmseg_pm.models import PruneMergeViT
from mmseg_pm.models.reducers import PruneMergeUnit

TINY = dict(img_size=(64, 64), patch_size=16, embed_dims=32, num_layers=4, num_heads=2,
            final_norm=True, norm_cfg=dict(type='LN', eps=1e-6))


def build_pair(pm_cfg, **kw):
    cfg = dict(TINY, **kw)
    ref = VisionTransformer(**cfg)
    ref.init_weights()
    model = PruneMergeViT(pm_cfg=pm_cfg, **cfg)
    model.load_state_dict(ref.state_dict(), strict=True)  # mmseg ViT checkpoint, strict
    ref.eval()
    model.eval()  # mmseg's VisionTransformer.train() returns None
    return ref, model


def compress(model, keep=0.5, prune=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    structures = {}
    for unit in model.pm_units:
        grid = tuple(unit.grid_size.tolist())
        scores = torch.rand(grid[0] * grid[1], generator=g)
        structures[unit.start] = pm.structure_from_scores(scores, grid, keep, prune)
    model.install_structures(structures)
    return structures


def outputs(model, x):
    outs = model(x)
    return [o[0] if isinstance(o, list) else o for o in outs]


@pytest.mark.parametrize('pm_cfg', [
    dict(mode='layer'),
    dict(mode='layer', layers=[1, 3]),
    dict(mode='span', spans=[(1, 2)]),
    dict(mode='span', spans=[(0, 1), (2, 3)], representation='dense'),
])
@pytest.mark.parametrize('kw', [
    dict(out_indices=-1),
    dict(out_indices=(0, 2, 3)),
    dict(with_cls_token=False, out_indices=(1, 3)),
    dict(output_cls_token=True, out_indices=(1, 3)),
])
def test_identity_structure_reproduces_mmseg_vit(pm_cfg, kw):
    ref, model = build_pair(pm_cfg, **kw)
    assert not model.is_compressed
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(outputs(ref, x), outputs(model, x)):
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-5
        # any input size works without a structure, as in mmseg
        x2 = torch.randn(1, 3, 80, 48)
        for a, b in zip(outputs(ref, x2), outputs(model, x2)):
            assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize('pm_cfg', [dict(mode='layer'), dict(mode='span', spans=[(1, 2)])])
def test_identity_through_the_maths_is_exact(pm_cfg):
    """Identity structures applied through merge/reconstruct (not skipped) change nothing."""
    ref, model = build_pair(pm_cfg, out_indices=(1, 3))
    for unit in model.pm_units:
        unit.is_identity = False  # force the sparse ops
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(outputs(ref, x), outputs(model, x)):
            assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize('grid_hw,pm_cfg', [((64, 64), dict(mode='layer')),
                                            ((48, 80), dict(mode='span', spans=[(1, 3)])),
                                            ((48, 80), dict(mode='layer', representation='dense'))])
def test_compressed_forward_shapes_and_gradients(grid_hw, pm_cfg):
    model = PruneMergeViT(pm_cfg=pm_cfg, **dict(TINY, img_size=grid_hw, out_indices=(1, 3)))
    model.init_weights()
    compress(model)
    assert model.is_compressed
    model.train()
    x = torch.randn(2, 3, *grid_hw)
    outs = model(x)
    for o in outs:
        assert o.shape == (2, 32, grid_hw[0] // 16, grid_hw[1] // 16)
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_sparse_and_dense_agree_at_initialisation():
    sparse = PruneMergeViT(pm_cfg=dict(mode='layer'), **dict(TINY, out_indices=(1, 3)))
    sparse.init_weights()
    dense = PruneMergeViT(pm_cfg=dict(mode='layer', representation='dense'),
                          **dict(TINY, out_indices=(1, 3)))
    dense.load_state_dict(
        {k: v for k, v in sparse.state_dict().items() if '.pm.' not in k and
         not k.startswith('pm.')}, strict=True)
    structures = compress(sparse)
    dense.install_structures(structures)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        sparse.eval()
        dense.eval()
        for a, b in zip(sparse(x), dense(x)):
            assert (a - b).abs().max() <= 1e-5


def test_cls_and_pruned_tokens_through_a_unit():
    model = PruneMergeViT(pm_cfg=dict(mode='layer', layers=[0]), **TINY)
    compress(model, keep=0.25, prune=0.5)
    unit = model.pm['0']
    x = torch.randn(2, 17, 32)
    z = unit.merge(x)
    assert torch.equal(z[:, 0], x[:, 0])
    y = unit.restore(z, x)
    pruned = unit.assign < 0
    assert pruned.sum() == 8
    assert torch.equal(y[:, 1:][:, pruned], x[:, 1:][:, pruned])


def test_smaller_input_padded_larger_rejected():
    model = PruneMergeViT(pm_cfg=dict(mode='layer'), **dict(TINY, out_indices=(3,)))
    compress(model)
    model.eval()
    out = model(torch.randn(1, 3, 40, 60))[0]  # grid 3x4 < 4x4: padded, cropped back
    assert out.shape == (1, 32, 3, 4)
    with pytest.raises(FixedTokenCountError, match='slide inference'):
        model(torch.randn(1, 3, 80, 64))
    assert model.fixed_input_size == (64, 64)


def test_compressed_checkpoint_strict_round_trip(tmp_path):
    cfg = dict(type='PruneMergeViT', pm_cfg=dict(mode='layer', layers=[0, 2]), **TINY)
    model = MODELS.build(cfg)
    compress(model)
    with torch.no_grad():
        model.pm['0'].merge_weight.mul_(1.5)  # "trained" matrices must survive
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    fresh = MODELS.build(cfg)  # same config, before compression
    params_before = {id(p) for p in fresh.parameters()}
    fresh.load_state_dict(torch.load(path)['state_dict'], strict=True)
    assert {id(p) for p in fresh.parameters()} == params_before  # optimizer refs stay valid
    assert fresh.structure_summary() == model.structure_summary()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fresh.eval()
        model.eval()
        assert torch.equal(fresh(x)[0], model(x)[0])


def test_corrupted_structures_rejected():
    cfg = dict(pm_cfg=dict(mode='layer', layers=[0, 2]), **TINY)
    model = PruneMergeViT(**cfg)
    compress(model)
    good = model.state_dict()

    def load(sd):
        PruneMergeViT(**cfg).load_state_dict(sd, strict=True)

    bad = copy.deepcopy(good)
    bad['pm.0.assign'][3] = 99
    with pytest.raises(PMStructureError, match='out of range'):
        load(bad)
    bad = copy.deepcopy(good)
    bad['pm.2.grid_size'] = torch.tensor([5, 5])
    with pytest.raises(PMStructureError, match='grid'):
        load(bad)
    bad = copy.deepcopy(good)
    bad['pm.2.merge_weight'] = bad['pm.2.merge_weight'][:-1]
    with pytest.raises(PMStructureError, match='shape'):
        load(bad)
    bad = {k: v for k, v in good.items() if not k.startswith('pm.2.')}
    with pytest.raises(PMStructureError, match='units'):
        load(bad)
    # a model compressed in memory refuses a checkpoint without its structure
    no_pm = {k: v for k, v in good.items() if not k.startswith('pm.')}
    with pytest.raises(RuntimeError, match='Missing key'):
        model.load_state_dict(no_pm, strict=True)


@pytest.mark.parametrize('pm_cfg,err', [
    (dict(mode='span'), 'spans'), (dict(mode='span', spans=[(0, 2), (2, 3)]), 'overlap'),
    (dict(mode='span', spans=[(0, 9)]), 'out of range'), (dict(bogus=1), 'unknown'),
    (dict(mode='grid'), 'mode'), (dict(representation='csr'), 'representation'),
])
def test_bad_pm_cfg(pm_cfg, err):
    with pytest.raises(ConfigError, match=err):
        PruneMergeViT(pm_cfg=pm_cfg, **TINY)


def test_deprecated_compression_keys_still_read():
    """Old configs with keep_rate etc. in pm_cfg keep building; the values go to the hook."""
    from mmseg_pm.engine import PMCompressHook
    model = PruneMergeViT(pm_cfg=dict(mode='layer', keep_rate=0.5, score_iters=3), **TINY)
    assert model.compress_cfg == dict(keep_rate=0.5, score_iters=3)
    assert set(model.pm_cfg) == {'mode', 'layers', 'spans', 'representation', 'trainable',
                                 'restore_outputs'}
    settings = PMCompressHook(prune_rate=0.1).resolve_settings(model)
    assert (settings.keep_rate, settings.prune_rate, settings.score_iters) == (0.5, 0.1, 3)
    with pytest.raises(ConfigError, match='keep_rate'):
        PMCompressHook(keep_rate=0.7).resolve_settings(model)
    bad = PruneMergeViT(pm_cfg=dict(mode='layer', keep_rate=1.5), **TINY)
    with pytest.raises(ConfigError, match='keep_rate'):
        PMCompressHook().resolve_settings(bad)


@pytest.mark.parametrize('pm_cfg,kw,chained', [
    # (unit start, whether it got the previous step's output and carried rows as one tensor)
    (dict(mode='layer'), dict(out_indices=-1), [(1, False), (2, True), (3, True)]),
    (dict(mode='layer'), dict(out_indices=(0, 2, 3)), [(1, False), (2, True), (3, True)]),
    (dict(mode='layer', layers=[0, 1, 3]), dict(with_cls_token=False, out_indices=(1, 3)),
     [(1, False)]),
    (dict(mode='span', spans=[(0, 1), (2, 3)]), dict(output_cls_token=True, out_indices=(0, 3)),
     [(2, False)]),
])
def test_inference_path_equals_the_training_path(pm_cfg, kw, chained, monkeypatch):
    """Without autograd, units keep only their pruned rows, units in consecutive blocks are
    restored and merged in one step, and a per-layer unit's block writes its output over its
    input (so the next step copies nothing); outputs, token counts and token groups equal the
    path training differentiates (every unit restored to the full grid)."""
    model = PruneMergeViT(pm_cfg=pm_cfg, **dict(TINY, **kw))
    model.init_weights()
    compress(model)
    model.eval()
    model.record_groups = True
    calls = []
    merge_after = PruneMergeUnit.merge_after

    def spy(unit, upstream, z, carried, joined=None):
        calls.append((unit.start, joined is not None))
        return merge_after(unit, upstream, z, carried, joined)
    monkeypatch.setattr(PruneMergeUnit, 'merge_after', spy)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.reducer.carries_rows(x)
        fast, fast_groups = outputs(model, x), model.last_groups
    assert calls == chained
    with torch.enable_grad():  # trainable M / R: the differentiable path
        assert not model.reducer.carries_rows(x)
        plain, plain_groups = outputs(model, x), model.last_groups
    assert calls == chained
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)
    assert [blk for blk, _ in fast_groups] == [blk for blk, _ in plain_groups]
    for (_, a), (_, b) in zip(fast_groups, plain_groups):
        assert torch.equal(a, b)


def test_compressed_inference_compiles_as_one_graph():
    """The static structure traces without graph breaks (``fullgraph=True`` raises on one)
    and the compiled model follows an in-place change of M / R like the eager one."""
    model = PruneMergeViT(pm_cfg=dict(mode='layer'), **dict(TINY, out_indices=(1, 3)))
    model.init_weights()
    compress(model)
    model.eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for _ in range(2):
            for a, b in zip(outputs(model, x), outputs(compiled, x)):
                torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
            for unit in model.pm_units:
                unit.restore_weight.mul_(2)
