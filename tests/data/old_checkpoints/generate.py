"""Write the old-checkpoint fixtures with the code of the commit this file was added in.

Each fixture is a compressed tiny segmentor saved the way ``tools/pm_compress.py`` and the
training runs save them (``{'meta': ..., 'state_dict': ...}``), plus the model config, an input
batch and the segmentor's tensor-mode output. ``tests/test_old_checkpoints.py`` rebuilds each
model from its config with the current code, loads the checkpoint strictly and checks the
outputs. Run once, from the repository root: ``python tests/data/old_checkpoints/generate.py``.
"""
import json
import logging
import os.path as osp

import torch
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

import mmseg_pm  # noqa: F401
from mmseg_pm.models.utils import prune_merge as pm

HERE = osp.dirname(osp.abspath(__file__))
register_all_modules(init_default_scope=True)
logging.getLogger('mmengine').setLevel(logging.WARNING)


def segmentor(img_size, pm_cfg, out_indices=-1, head='mask', distill=False):
    backbone = dict(type='PruneMergeViT', img_size=img_size, patch_size=8, embed_dims=16,
                    num_layers=4, num_heads=2, drop_path_rate=0.0, final_norm=True,
                    norm_cfg=dict(type='LN', eps=1e-6), with_cls_token=True,
                    out_indices=out_indices, pm_cfg=pm_cfg)
    if head == 'mask':
        decode_head = dict(type='SegmenterMaskTransformerHead', in_channels=16, channels=16,
                           num_classes=5, num_layers=1, num_heads=2, embed_dims=16,
                           dropout_ratio=0.0,
                           loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False))
    else:  # multi-level head on several outputs
        decode_head = dict(type='FCNHead', in_channels=[16, 16], in_index=[0, 1],
                           input_transform='resize_concat', channels=8, num_convs=1,
                           concat_input=False, num_classes=5, norm_cfg=None,
                           loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False))
    cfg = dict(type='PMDistillEncoderDecoder' if distill else 'EncoderDecoder',
               data_preprocessor=dict(type='SegDataPreProcessor', mean=[127.5] * 3,
                                      std=[127.5] * 3, bgr_to_rgb=True, size=img_size),
               backbone=backbone, decode_head=decode_head, train_cfg=dict(),
               test_cfg=dict(mode='whole'))
    return cfg


CASES = {
    # per-layer units in every block, pruning, sparse, global search from random scores
    'layer_sparse_pruned': dict(img_size=(32, 32), pm_cfg=dict(mode='layer', keep_rate=0.5,
                                                                prune_rate=0.2),
                                distill=True),
    # per-layer units in two blocks on a non-square grid (4 x 3 patches of 8 px), dense M / R
    'layer_dense_nonsquare': dict(img_size=(32, 24), pm_cfg=dict(mode='layer', layers=[1, 3],
                                                                  representation='dense',
                                                                  keep_rate=0.6,
                                                                  prune_rate=0.1)),
    # span mode with pruning, an out_indices output inside the span, non-square (3 x 5)
    'span_sparse_nonsquare': dict(img_size=(24, 40), pm_cfg=dict(mode='span',
                                                                  spans=[(1, 2)],
                                                                  keep_rate=0.5,
                                                                  prune_rate=0.2),
                                  out_indices=(1, 3), head='fcn'),
    # two dense spans
    'span_dense': dict(img_size=(32, 32), pm_cfg=dict(mode='span', spans=[(0, 1), (2, 3)],
                                                       representation='dense',
                                                       keep_rate=0.7)),
}


def main():
    from mmseg_pm.compression.search import search_structures
    for seed, (name, case) in enumerate(sorted(CASES.items())):
        torch.manual_seed(seed)
        cfg = segmentor(**case)
        model = MODELS.build(cfg)
        model.init_weights()
        backbone = model.backbone
        grid = backbone.structure_grid
        n = grid[0] * grid[1]
        spans = [(u.start, u.end) for u in backbone.pm_units]
        blocks = sorted({i for a, b in spans for i in range(a, b + 1)})
        g = torch.Generator().manual_seed(100 + seed)
        scores = {i: torch.rand(n, generator=g, dtype=torch.float64) for i in blocks}
        pm_cfg = backbone.pm_cfg
        structures, _ = search_structures(scores, spans, grid, pm_cfg['keep_rate'],
                                          pm_cfg['prune_rate'], depth_discount=0.025)
        backbone.install_structures(structures)
        # "finetuned" M / R: move them off their initial values (as training would)
        with torch.no_grad():
            for unit in backbone.pm_units:
                for p in unit.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g) * (p != 0))
        model.eval()
        x = torch.randn(2, 3, *case['img_size'], generator=g)
        with torch.no_grad():
            out = model(x, mode='tensor')
        meta = dict(pm_structure=backbone.structure_summary(), mmseg_pm_version='0.1.0')
        torch.save(dict(meta=meta, state_dict=model.state_dict()),
                   osp.join(HERE, f'{name}.pth'))
        torch.save(dict(inputs=x, outputs=out), osp.join(HERE, f'{name}_io.pth'))
        with open(osp.join(HERE, f'{name}.json'), 'w') as f:
            json.dump(cfg, f, indent=1)
        print(name, tuple(out.shape), [u.num_groups for u in backbone.pm_units])


if __name__ == '__main__':
    main()
