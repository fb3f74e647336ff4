"""Config adjustments and checks shared by ``tools/train.py`` and ``tools/test.py``."""
import torch

from .preflight import UserError


def prepare_cfg(cfg) -> None:
    """Adjust a loaded config to this machine, in place.

    * distributed backend ``gloo`` when no GPU is visible (``nccl`` needs CUDA).
    """
    if not torch.cuda.is_available() and cfg.get('env_cfg', {}).get('dist_cfg'):
        cfg.env_cfg.dist_cfg['backend'] = 'gloo'


def check_loaded_structure(model, checkpoint: str) -> None:
    """Refuse to test a Prune-and-Merge model whose checkpoint carried no structure.

    A model built from a compressed config starts with identity units; if the checkpoint had
    no ``backbone.pm.*`` tensors it would silently run uncompressed.

    Raises:
        UserError: the model has Prune-and-Merge units but all are still the identity.
    """
    from mmseg_pm.models.backbones.prune_merge_vit import PruneMergeViT
    model = getattr(model, 'module', model)
    for m in model.modules():
        if isinstance(m, PruneMergeViT) and len(m.pm) and not m.is_compressed:
            raise UserError(
                f'{checkpoint} carries no Prune-and-Merge structure (no backbone.pm.* '
                f'tensors), so this compressed config would run uncompressed. Test an '
                f'uncompressed checkpoint with its baseline config, or compress it first '
                f'(tools/pm_compress.py or tools/train.py with the pm_ config).')
