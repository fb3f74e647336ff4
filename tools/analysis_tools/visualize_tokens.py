"""Draw the token groups of any token-reduction method over an image, prediction beside it.

Usage:
  python tools/analysis_tools/visualize_tokens.py CONFIG CHECKPOINT IMAGE --out OUT.png
         [--steps B [B ...]] [--panel-size PX] [--device cpu] [--cfg-options k=v ...]

One panel per reduction step (named by its block; default: up to four steps spread over the
depth): the image in its own aspect ratio, the boundaries between token groups drawn over it
(readable with hundreds of groups), dropped / pruned tokens greyed out, Prune-and-Merge group
centres as dots; the title gives the step's group count. A last panel shows the segmentation
prediction of mmseg's ``inference_model`` in the dataset's palette. A line under the panels says
whether the groups are the same for every image (Prune-and-Merge's static structure) or depend
on the image. The model runs at its crop (a fixed-token-count model) or at the image resized to
the crop's longer side with its aspect ratio kept (other methods).
"""
import colorsys
import os.path as osp

from mmseg_pm.utils.cli import (ArgumentParser, ConfigOptions, check_output_file, quiet_logging,
                                run_cli)

TITLE_PX = 30
FOOTER_PX = 22
DPI = 100


def parse_args():
    parser = ArgumentParser(description='Visualise the token groups of a token-reduction model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint (a compressed one carries its structure)')
    parser.add_argument('image', help='image file')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--steps', '--layers', type=int, nargs='+', dest='steps',
                        help='reduction steps to draw, by block (default: up to 4 spread ones)')
    parser.add_argument('--panel-size', type=int, default=320, help='pixels per panel side')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]'")
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    return parser.parse_args()


def group_edges(groups, grid):
    """Line segments ``[((x0, y0), (x1, y1)), ...]`` in patch units between neighbouring
    patches of different groups (``groups``: ``(N,)`` LongTensor, -1 = dropped)."""
    g = groups.reshape(grid).cpu().numpy()
    h, w = grid
    segments = []
    for i in range(h):
        for j in range(w):
            if j + 1 < w and g[i, j] != g[i, j + 1]:
                segments.append(((j + 1, i), (j + 1, i + 1)))
            if i + 1 < h and g[i, j] != g[i + 1, j]:
                segments.append(((j, i + 1), (j + 1, i + 1)))
    return segments


def palette_of(model, num_classes: int):
    """Palette ``(classes, 3)`` uint8: the checkpoint's dataset_meta, else the config's test
    dataset class, else fixed random colours."""
    import numpy as np
    palette = (getattr(model, 'dataset_meta', None) or {}).get('palette')
    if not palette or len(palette) < num_classes:
        from mmseg.registry import DATASETS
        cls = DATASETS.get(model.cfg.test_dataloader.dataset.get('type', ''))
        palette = getattr(cls, 'METAINFO', {}).get('palette') if cls else None
    if not palette or len(palette) < num_classes:
        palette = [[int(255 * v) for v in colorsys.hsv_to_rgb((k * 0.618) % 1, 0.7, 0.9)]
                   for k in range(num_classes)]
    return np.asarray(palette, dtype=np.uint8)[:num_classes]


def read_image(path: str):
    """RGB uint8 array of ``path``.

    Raises:
        UserError: missing file, or not a readable image (the file named).
    """
    import mmcv

    from mmseg_pm.errors import UserError
    if not osp.isfile(path):
        raise UserError(f'image not found: {path} (looked in {osp.abspath(path)})')
    try:
        image = mmcv.imread(path, channel_order='rgb')
    except Exception as e:  # noqa: BLE001  (any decoder error: name the file)
        raise UserError(f'cannot read image {path}: {type(e).__name__}') from None
    if image is None or image.ndim != 3:
        raise UserError(f'cannot read image {path}: not a colour image file')
    return image


def model_input(model, image, backbone):
    """``(1, 3, H, W)`` normalised input and its patch grid: the fixed crop, or the image
    resized to the crop's longer side (aspect kept, sides multiples of two patches)."""
    import mmcv
    import torch
    ps = backbone.patch_size
    crop = backbone.fixed_input_size
    if crop is None:
        side = max(backbone.img_size)
        scale = side / max(image.shape[:2])
        unit = 2 * ps
        crop = tuple(max(unit, int(round(v * scale / unit)) * unit) for v in image.shape[:2])
    resized = mmcv.imresize(image[..., ::-1], (crop[1], crop[0]))  # BGR, as LoadImageFromFile
    tensor = torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous()
    with torch.no_grad():
        x = model.data_preprocessor(dict(inputs=[tensor]), training=False)['inputs']
    return x, (crop[0] // ps, crop[1] // ps)


def main():
    args = parse_args()
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from mmseg.apis import inference_model

    from mmseg_pm.analysis.build import load_segmentor
    from mmseg_pm.errors import UserError
    from mmseg_pm.models.backbones import reduction_backbone

    quiet_logging()
    if args.panel_size < 64:
        raise UserError('--panel-size must be at least 64 pixels')
    check_output_file(args.out, '--out', inputs=[args.image, args.checkpoint, args.config])
    image = read_image(args.image)
    model = load_segmentor(args.config, args.checkpoint, args.cfg_options, args.device)
    backbone = reduction_backbone(model)
    if backbone is None or backbone.reducer is None:
        raise UserError(f'{args.config}: the backbone has no token reduction; nothing to draw')
    if not backbone.is_reducing:
        raise UserError(f'{args.checkpoint} with {args.config}: the token reduction is the '
                        f'identity (e.g. a Prune-and-Merge config with an uncompressed '
                        f'checkpoint); give a compressed checkpoint')
    x, grid = model_input(model, image, backbone)
    backbone.record_groups = True
    with torch.no_grad():
        model(x.to(args.device), mode='tensor')
    backbone.record_groups = False
    steps = {block: source for block, source in backbone.last_groups or []}
    if not steps:
        raise UserError('the model merged no token on this image (nothing to draw)')
    if args.steps:
        unknown = [b for b in args.steps if b not in steps]
        if unknown:
            raise UserError(f'--steps {unknown}: no reduction step there; steps are at blocks '
                            f'{sorted(steps)}')
        chosen = list(args.steps)
    else:
        blocks = sorted(steps)
        chosen = sorted({blocks[round(i * (len(blocks) - 1) / 3)] for i in range(4)})

    result = inference_model(model, image[..., ::-1].copy())
    pred = result.pred_sem_seg.data[0].cpu().numpy()
    palette = palette_of(model, int(model.decode_head.num_classes))
    img_h, img_w = image.shape[:2]
    size = args.panel_size
    panel_w = int(size * min(2.0, img_w / img_h)) if img_w >= img_h else size
    panel_h = int(size * min(2.0, img_h / img_w)) if img_h > img_w else size
    n = len(chosen) + 1
    width, height = panel_w * n, panel_h + TITLE_PX + FOOTER_PX
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    sx, sy = img_w / grid[1], img_h / grid[0]
    method = type(backbone.reducer).__name__
    for i, block in enumerate(chosen):
        source = steps[block]
        groups = source[0] if source.dim() == 2 else source
        ax = fig.add_axes([i / n, FOOTER_PX / height, 1 / n, panel_h / height])
        ax.imshow(image, extent=(0, img_w, img_h, 0))
        dropped = (groups < 0).reshape(grid).cpu().numpy()
        if dropped.any():
            grey = np.zeros((*grid, 4))
            grey[dropped] = (0.45, 0.45, 0.45, 0.8)
            ax.imshow(grey, extent=(0, img_w, img_h, 0), interpolation='nearest')
        segments = [((x0 * sx, y0 * sy), (x1 * sx, y1 * sy))
                    for (x0, y0), (x1, y1) in group_edges(groups, grid)]
        ax.add_collection(LineCollection(segments, colors='yellow', linewidths=0.6))
        centers = getattr(getattr(backbone.reducer, str(block), None), 'centers', None)
        if centers is not None:
            c = centers.cpu().numpy()
            ax.scatter((c % grid[1] + 0.5) * sx, (c // grid[1] + 0.5) * sy, s=5, c='white',
                       edgecolors='black', linewidths=0.3)
        ax.set_xlim(0, img_w)
        ax.set_ylim(img_h, 0)
        ax.axis('off')
        kept = groups[groups >= 0]
        fig.text((i + 0.5) / n, 1 - 0.5 * TITLE_PX / height,
                 f'{method}, after block {block}: {int(kept.unique().numel())} groups of '
                 f'{groups.numel()} patches' + (f', {int(dropped.sum())} dropped'
                                                if dropped.any() else ''),
                 ha='center', va='center', fontsize=7)
    ax = fig.add_axes([(n - 1) / n, FOOTER_PX / height, 1 / n, panel_h / height])
    colour = palette[np.clip(pred, 0, len(palette) - 1)]
    ax.imshow((0.5 * image + 0.5 * colour).astype(np.uint8), extent=(0, img_w, img_h, 0))
    ax.axis('off')
    fig.text((n - 0.5) / n, 1 - 0.5 * TITLE_PX / height, f'prediction ({img_w}x{img_h})',
             ha='center', va='center', fontsize=7)
    static = getattr(backbone.reducer, 'fixed_grid', None) is not None
    fig.text(0.01, 0.5 * FOOTER_PX / height,
             'Static structure: the same groups for every image.' if static else
             'The groups depend on the image (this image shown).', ha='left', va='center',
             fontsize=7)
    handles = [Line2D([], [], color='yellow', lw=1, label='group boundary'),
               Patch(color=(0.45, 0.45, 0.45), label='dropped / pruned')]
    if static:
        handles.append(Line2D([], [], marker='o', ls='', color='white', markeredgecolor='black',
                              markersize=4, label='group centre'))
    fig.legend(handles=handles, loc='lower right', ncol=len(handles), fontsize=7,
               frameon=False)
    fig.savefig(args.out, dpi=DPI)
    plt.close(fig)
    print(f'wrote {args.out} ({width}x{height} px): {method} steps at blocks {chosen}, '
          f'grid {grid[0]}x{grid[1]}')


if __name__ == '__main__':
    run_cli(main)
