"""The stack fixes applied on ``import mmseg_pm`` (mmseg_pm.compat)."""
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import CheckpointLoader

from mmseg_pm.compat import prepare_cfg
from mmseg_pm.errors import CheckpointReadError, UserError
from tests.utils import truncated_copy


def test_local_checkpoints_load_with_weights_only_false(tmp_path):
    import numpy as np
    path = tmp_path / 'iter_4.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'message_hub': {'x': np.float64(1.5)}},
               path)
    ckpt = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert ckpt['message_hub']['x'] == 1.5


def test_unreadable_checkpoint_is_one_user_error(tmp_path):
    """Past the pre-flight check (e.g. --resume), torch.load's failure is one line."""
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.zeros(4096)}}, good)
    bad = truncated_copy(good, tmp_path / 'iter_4.pth')
    with pytest.raises(CheckpointReadError, match='cannot read checkpoint .*iter_4.pth') as e:
        CheckpointLoader.load_checkpoint(bad, map_location='cpu')
    assert isinstance(e.value, UserError) and '\n' not in str(e.value)
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.zeros(4096)}, legacy, _use_new_zipfile_serialization=False)
    bad = truncated_copy(legacy, tmp_path / 'legacy_truncated.pth')
    with pytest.raises(CheckpointReadError, match='truncated'):
        CheckpointLoader.load_checkpoint(bad, map_location='cpu')
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'none.pth'), map_location='cpu')


def test_no_downloads():
    with pytest.raises(FileNotFoundError, match='does not download .* checkpoints/w.pth'):
        CheckpointLoader.load_checkpoint('https://x.org/w.pth?dl=1', map_location='cpu')


def test_mmseg_build_warnings_are_silenced_others_are_not():
    from mmseg.registry import MODELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('default')
        import mmseg_pm.compat as compat
        compat.apply()  # (pytest resets the filters per test)
        head = MODELS.build(dict(type='FCNHead', in_channels=4, channels=4, num_convs=0,
                                 num_classes=3, norm_cfg=None,
                                 loss_decode=dict(type='CrossEntropyLoss')))
        warnings.warn('another warning')
    assert head.num_classes == 3
    assert [str(w.message) for w in caught] == ['another warning']


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU adjustments')
def test_prepare_cfg_without_gpu():
    cfg = Config(dict(launcher='none'))
    prepare_cfg(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo' and 'model_wrapper_cfg' not in cfg
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    prepare_cfg(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'MMDistributedDataParallel'
    assert cfg.model_wrapper_cfg.device_ids is None
    cfg = Config(dict(launcher='slurm', model_wrapper_cfg=dict(type='MMDistributedDataParallel',
                                                               find_unused_parameters=True)))
    prepare_cfg(cfg)
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.model_wrapper_cfg.find_unused_parameters


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU launcher fix')
def test_launchers_skip_set_device_without_gpu():
    from mmengine.dist import utils as dist_utils
    for name in ('_init_dist_pytorch', '_init_dist_slurm', '_init_dist_mpi'):
        assert getattr(getattr(dist_utils, name), '_mmseg_pm_cpu_safe', False), name
