"""Link the 38-image ADE20K sample as a small train/val set in mmseg's ADE20K layout.

The sample (``../shared/data/ade20k_sample``: 38 ADE20K *validation* pairs, no training split)
is split deterministically by sorted file name: every 5th pair (indices 0, 5, ..., 35: 8 pairs)
is ``validation``, the other 30 are ``training``. Files are symlinked, never copied. Without the
sample folder, a synthetic ADE20K-format set is generated instead (and this is said loudly).

Usage: python tools/dataset_converters/prepare_ade20k_sample.py [--src DIR] [--out DIR]
Result: OUT/ADEChallengeData2016/{images,annotations}/{training,validation}

An explicit ``--src`` that is missing or holds no image/annotation pairs is an error (exit 2);
only the default location falls back to the synthetic set.
"""
import os
import os.path as osp
import shutil
import sys

import numpy as np

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_SRC = osp.join(osp.dirname(REPO), 'shared', 'data', 'ade20k_sample')


def split_names(names):
    """Deterministic split of sorted stems: (train, val), val = every 5th from index 0."""
    names = sorted(names)
    val = names[::5]
    return [n for n in names if n not in val], val


def link_sample(src: str, root: str) -> tuple:
    img_dir = osp.join(src, 'images', 'validation')
    ann_dir = osp.join(src, 'annotations', 'validation')
    stems = [osp.splitext(f)[0] for f in os.listdir(img_dir) if f.endswith('.jpg')]
    stems = [s for s in stems if osp.isfile(osp.join(ann_dir, s + '.png'))]
    train, val = split_names(stems)
    for split, part in (('training', train), ('validation', val)):
        for kind, ext, sdir in (('images', '.jpg', img_dir), ('annotations', '.png', ann_dir)):
            d = osp.join(root, kind, split)
            os.makedirs(d, exist_ok=True)
            for s in part:
                os.symlink(osp.abspath(osp.join(sdir, s + ext)), osp.join(d, s + ext))
    return train, val


def make_synthetic(root: str, num_train: int = 30, num_val: int = 8, size=(384, 512),
                   seed: int = 0) -> tuple:
    """Random ADE20K-format pairs: smooth colour regions with labels 1..150 (0 = unlabeled)."""
    import cv2
    rng = np.random.default_rng(seed)
    out = ([], [])
    for i in range(num_train + num_val):
        split = 'training' if i < num_train else 'validation'
        h, w = size
        ann = np.zeros((h, w), np.uint8)
        img = np.zeros((h, w, 3), np.uint8)
        for _ in range(6):
            y0, x0 = rng.integers(0, h - 32), rng.integers(0, w - 32)
            y1, x1 = y0 + rng.integers(32, h - y0 + 1), x0 + rng.integers(32, w - x0 + 1)
            label = int(rng.integers(1, 151))
            ann[y0:y1, x0:x1] = label
            img[y0:y1, x0:x1] = (label * 37 % 255, label * 91 % 255, label * 53 % 255)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        stem = f'SYN_{split}_{i:05d}'
        for kind, ext, arr in (('images', '.jpg', img), ('annotations', '.png', ann)):
            d = osp.join(root, kind, split)
            os.makedirs(d, exist_ok=True)
            cv2.imwrite(osp.join(d, stem + ext), arr)
        out[0 if split == 'training' else 1].append(stem)
    return out


def count_pairs(src: str) -> int:
    """Number of image / annotation pairs under ``src`` (ADE20K validation layout)."""
    img_dir = osp.join(src, 'images', 'validation')
    ann_dir = osp.join(src, 'annotations', 'validation')
    if not osp.isdir(img_dir) or not osp.isdir(ann_dir):
        return 0
    return sum(1 for f in os.listdir(img_dir) if f.endswith('.jpg') and osp.isfile(
        osp.join(ann_dir, osp.splitext(f)[0] + '.png')))


def main():
    from mmseg_pm.errors import UserError
    from mmseg_pm.utils.cli import ArgumentParser, check_writable_dir
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--src', help='the ADE20K sample folder (default: '
                        '../shared/data/ade20k_sample, or $MMSEG_PM_SAMPLE)')
    parser.add_argument('--out', default='data/ade20k_sample', help='output folder')
    args = parser.parse_args()
    src = args.src or os.environ.get('MMSEG_PM_SAMPLE', DEFAULT_SRC)
    if args.src and not count_pairs(args.src):
        raise UserError(f'--src {args.src}: no ADE20K image / annotation pairs there (expected '
                        f'images/validation/*.jpg with annotations/validation/*.png; looked in '
                        f'{osp.abspath(args.src)})')
    check_writable_dir(args.out, '--out')
    root = osp.join(args.out, 'ADEChallengeData2016')
    if osp.isdir(root):
        shutil.rmtree(root)
    if count_pairs(src):
        train, val = link_sample(src, root)
        print(f'ADE20K sample: {len(train)} train / {len(val)} val real ADE20K validation '
              f'pairs from {osp.abspath(src)} (deterministic split: every 5th sorted '
              f'pair is val) -> {root}')
    else:
        print('=' * 78, file=sys.stderr)
        print(f'WARNING: ADE20K sample not found at {osp.abspath(src)}.\n'
              f'WARNING: generating a SYNTHETIC ADE20K-format set instead; mIoU on it means '
              f'nothing.', file=sys.stderr)
        print('=' * 78, file=sys.stderr)
        train, val = make_synthetic(root)
        print(f'synthetic set: {len(train)} train / {len(val)} val -> {root}')
    return 0


if __name__ == '__main__':
    from mmseg_pm.utils.cli import run_cli
    run_cli(main)
