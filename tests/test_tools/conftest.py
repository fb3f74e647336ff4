"""Fixtures of the tool tests: tiny analysis models as files, training runs of the demo
configs (shared by the train / test / resume tests). Helpers live in :mod:`tests.utils`."""
import pytest

from tests.utils import (BASELINE, DEMO, build_model, compress_randomly, run_tool,
                         save_checkpoint, tiny_cfg)


@pytest.fixture(scope='session')
def tiny_files(tmp_path_factory, sample_root):
    """Tiny models (:func:`tests.utils.tiny_cfg`) as files, their data root the sample.

    ``config`` + ``pm`` (a uniform structure from random scores, keep 0.5, prune 0.25) /
    ``plain`` (no structure: identity units) checkpoints; ``baseline_config`` + ``baseline``
    (the same weights in a ViT without reduction); ``tome_config`` + ``tome`` (ToMe, r=4 per
    block).
    """
    out = tmp_path_factory.mktemp('tiny')
    cfg = tiny_cfg(sample_root)
    cfg.dump(str(out / 'tiny.py'))
    model = build_model(cfg)
    files = dict(config=str(out / 'tiny.py'), dir=out, data_root=sample_root,
                 plain=save_checkpoint(model, out / 'plain.pth'),
                 pm=save_checkpoint(compress_randomly(model, 0.5, 0.25), out / 'pm.pth'))
    baseline = tiny_cfg(sample_root, plain=True)
    baseline.dump(str(out / 'tiny_baseline.py'))
    weights = {k: v for k, v in model.state_dict().items() if '.pm.' not in k}
    base_model = build_model(baseline, init=False)
    base_model.load_state_dict(weights, strict=True)
    files.update(baseline_config=str(out / 'tiny_baseline.py'),
                 baseline=save_checkpoint(base_model, out / 'baseline.pth'))
    tome = tiny_cfg(sample_root, token_reduction=dict(type='ToMe', r=4))
    tome.dump(str(out / 'tiny_tome.py'))
    files.update(tome_config=str(out / 'tiny_tome.py'),
                 tome=save_checkpoint(build_model(tome), out / 'tome.pth'))
    return files


def _train(tmp_path_factory, name, config, sample_root, *options):
    work = tmp_path_factory.mktemp(name) / 'work'
    proc = run_tool('tools/train.py', config, '--work-dir', str(work), '--data-root',
                    sample_root, '--cfg-options', 'val_dataloader.dataset.indices=4',
                    *options)
    return dict(work_dir=str(work), log=proc.stdout + proc.stderr)


@pytest.fixture(scope='session')
def pm_run(tmp_path_factory, sample_root):
    """``tools/train.py`` on the demo config: Prune-and-Merge scoring (2 iterations of batch
    2), 2 finetuning iterations with self-distillation, validation on 4 images at the end.

    Returns:
        dict: ``work_dir`` (iter_1.pth, iter_2.pth, pm_structure.json) and the ``log``.
    """
    return _train(tmp_path_factory, 'pm_run', DEMO, sample_root)


@pytest.fixture(scope='session')
def baseline_run(tmp_path_factory, sample_root):
    """``tools/train.py`` on the uncompressed twin config: 2 iterations, validation on 4
    images at the end."""
    return _train(tmp_path_factory, 'baseline_run', BASELINE, sample_root)
