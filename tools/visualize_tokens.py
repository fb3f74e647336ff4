"""Draw the Prune-and-Merge merge groups of a compressed checkpoint over an image.

Usage:
  python tools/visualize_tokens.py CONFIG CHECKPOINT IMAGE --out OUT.png
         [--layers A [A ...]] [--panel-size PX] [--device cpu] [--cfg-options k=v ...]

One panel per chosen unit (named by its first block A; default: up to four units spread over the
depth): the image resized to the crop the structure is built for, each merge group in its own
colour, the group centers marked with dots, pruned tokens greyed out. A last panel shows the
segmentation prediction of mmseg's ``inference_model`` (slide / whole inference as the config
says) in the dataset's palette over the image. The PNG is ``PX * (units + 1)`` pixels wide and
``PX + 28`` pixels high. The checkpoint must carry a structure (a compressed checkpoint).
"""
import argparse
import colorsys
import os
import os.path as osp

from mmengine.config import DictAction

from mmseg_pm.utils import UserError, run_cli

TITLE_PX = 28
DPI = 100


def parse_args():
    parser = argparse.ArgumentParser(description='Visualise Prune-and-Merge merge groups')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='compressed checkpoint (carries the structure)')
    parser.add_argument('image', help='image file')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--layers', type=int, nargs='+',
                        help='units to draw, by first block (default: up to 4 spread units)')
    parser.add_argument('--panel-size', type=int, default=320, help='pixels per panel')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]'")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    return parser.parse_args()


def group_colours(num_groups: int):
    """``(K, 3)`` float RGB in [0, 1]: golden-ratio hues, so neighbouring groups differ."""
    import numpy as np
    return np.array([colorsys.hsv_to_rgb((0.137 + k * 0.618034) % 1.0, 0.8 - 0.25 * (k % 2),
                                         0.95) for k in range(num_groups)])


def token_overlay(assign, grid):
    """RGBA ``(H_g, W_g, 4)`` overlay: group colours, grey (opaque) for pruned tokens.

    Args:
        assign (Tensor): LongTensor ``(N,)`` group per patch, -1 pruned.
        grid (tuple[int, int]): ``(H_g, W_g)``.
    """
    import numpy as np
    a = assign.cpu().numpy()
    colours = group_colours(int(a.max()) + 1 if (a >= 0).any() else 1)
    rgba = np.zeros((a.size, 4))
    kept = a >= 0
    rgba[kept, :3] = colours[a[kept]]
    rgba[kept, 3] = 0.5
    rgba[~kept] = (0.45, 0.45, 0.45, 0.85)
    return rgba.reshape(grid[0], grid[1], 4)


def palette_of(model, num_classes: int):
    """Palette ``(classes, 3)`` uint8: the checkpoint's dataset_meta, else the config's test
    dataset class, else fixed random colours."""
    import numpy as np
    meta = getattr(model, 'dataset_meta', None) or {}
    palette = meta.get('palette')
    if not palette or len(palette) < num_classes:
        try:
            from mmseg.registry import DATASETS
            dataset_type = model.cfg.test_dataloader.dataset.type
            palette = DATASETS.get(dataset_type).METAINFO.get('palette')
        except Exception:  # no dataset / class: fall back to random colours
            palette = None
    if not palette or len(palette) < num_classes:
        palette = np.random.default_rng(0).integers(0, 255, (num_classes, 3))
    return np.asarray(palette, dtype=np.uint8)[:num_classes]


def main():
    args = parse_args()
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mmcv
    import numpy as np
    from mmseg.apis import inference_model, init_model

    from mmseg_pm.analysis.common import get_backbone, load_config, quiet_logging
    from mmseg_pm.utils.preflight import check_checkpoint

    quiet_logging()
    check_checkpoint(args.checkpoint, 'checkpoint')
    if not osp.isfile(args.image):
        raise UserError(f'image not found: {args.image} (looked in {osp.abspath(args.image)})')
    if args.panel_size < 64:
        raise UserError('--panel-size must be at least 64 pixels')
    cfg = load_config(args.config, args.cfg_options)
    model = init_model(cfg, args.checkpoint, device=args.device)
    backbone = get_backbone(model)
    if backbone is None or not len(backbone.pm):
        raise UserError(f'{args.config}: the backbone is not a PruneMergeViT with '
                        f'Prune-and-Merge units; nothing to draw')
    if not backbone.is_compressed:
        raise UserError(f'{args.checkpoint} carries no Prune-and-Merge structure (no '
                        f'backbone.pm.* tensors, or identity units only): give a compressed '
                        f'checkpoint (tools/train.py with a pm_ config writes them)')
    units = {u.start: u for u in backbone.pm_units if not u.is_identity}
    if args.layers:
        unknown = [a for a in args.layers if a not in units]
        if unknown:
            raise UserError(f'--layers {unknown}: no compressed unit starts there; units start '
                            f'at blocks {sorted(units)}')
        chosen = [units[a] for a in args.layers]
    else:
        starts = sorted(units)
        picks = sorted({starts[round(i * (len(starts) - 1) / 3)] for i in range(4)})
        chosen = [units[a] for a in picks]

    image = mmcv.imread(args.image, channel_order='rgb')
    result = inference_model(model, args.image)
    pred = result.pred_sem_seg.data[0].cpu().numpy()
    palette = palette_of(model, int(model.decode_head.num_classes))

    grid = backbone.structure_grid
    ps = backbone.patch_size
    crop_h, crop_w = grid[0] * ps, grid[1] * ps
    resized = mmcv.imresize(image, (crop_w, crop_h))
    size = args.panel_size
    n = len(chosen) + 1
    width, height = size * n, size + TITLE_PX
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    for i, unit in enumerate(chosen):
        ax = fig.add_axes([i / n, 0, 1 / n, size / height])
        ax.imshow(resized, extent=(0, crop_w, crop_h, 0))
        ax.imshow(token_overlay(unit.assign, grid), extent=(0, crop_w, crop_h, 0),
                  interpolation='nearest')
        c = unit.centers.cpu().numpy()
        ax.scatter((c % grid[1] + 0.5) * ps, (c // grid[1] + 0.5) * ps, s=6, c='white',
                   edgecolors='black', linewidths=0.4)
        ax.set_xlim(0, crop_w)
        ax.set_ylim(crop_h, 0)
        ax.axis('off')
        s = unit.summary()
        span = f'block {unit.start}' if unit.start == unit.end else \
            f'blocks {unit.start}-{unit.end}'
        fig.text((i + 0.5) / n, 1 - 0.5 * TITLE_PX / height,
                 f'{span}: N={s["num_tokens"]} K={s["num_groups"]} merged={s["num_merged"]} '
                 f'pruned={s["num_pruned"]}', ha='center', va='center', fontsize=7)
    ax = fig.add_axes([(n - 1) / n, 0, 1 / n, size / height])
    colour = palette[np.clip(pred, 0, len(palette) - 1)]
    ax.imshow((0.5 * image + 0.5 * colour).astype(np.uint8))
    ax.axis('off')
    fig.text((n - 0.5) / n, 1 - 0.5 * TITLE_PX / height,
             f'prediction ({image.shape[0]}x{image.shape[1]})', ha='center', va='center',
             fontsize=7)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=DPI)
    plt.close(fig)
    print(f'wrote {args.out} ({width}x{height} px): units at blocks '
          f'{[u.start for u in chosen]}, grid {grid[0]}x{grid[1]} of a {crop_h}x{crop_w} crop '
          f'(image resized to it); colours = merge groups, dots = centers, grey = pruned')


if __name__ == '__main__':
    run_cli(main)
