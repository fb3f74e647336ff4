"""Official Prune-and-Merge (pm-vit, PM-Segmenter) -> compressed mmseg_pm, dense units
(:mod:`mmseg_pm.converters.pm_official`)."""
import pytest
import torch

from mmseg_pm.converters.formats import ConversionReport, detect_format
from mmseg_pm.converters.pm_official import convert_pm_official, pm_structure_from_state_dict
from mmseg_pm.errors import CheckpointFormatError
from mmseg_pm.errors import StructureError as PMStructureError
from mmseg_pm.functional.prune_merge_dense import structure_from_dense
from mmseg_pm.models.backbones.prune_merge_vit import STRUCTURE_KEYS

from .utils import (EMBED, GRID, IMG, encoder_tokens, official_units, our_backbone,
                    pm_vit_source, segmenter_mmseg, segmenter_source, strip, tiny_timm)


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
    """As published, PM-Segmenter never sets R in the recover block (wafev/PM-Segmenter: its
    ``Block`` merges and recovers in one block, and ``tm_prune_block`` never matches the
    recover block's name): the merge block recovers within itself, so the unit is (a, a)
    whatever recover_list says."""
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


def test_pm_structure_keys_are_the_backbones():
    checkpoint, *_ = pm_vit_source(depth=2, permute_block=None)
    record = pm_structure_from_state_dict(convert_pm_official(checkpoint))
    assert tuple(record['pm_cfg']) == STRUCTURE_KEYS


def test_pm_official_overlapping_units_raise():
    checkpoint, *_ = pm_vit_source(depth=2, permute_block=None)
    with pytest.raises(CheckpointFormatError, match='overlap'):
        convert_pm_official(dict(checkpoint, merge_list=[0, 0]))
