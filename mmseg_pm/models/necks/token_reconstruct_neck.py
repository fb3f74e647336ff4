"""``TokenReconstructNeck``: restores compressed backbone outputs to the full token grid."""
from typing import Optional

from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ..backbones.token_reduction_vit import CompressedTokens


@MODELS.register_module()
class TokenReconstructNeck(BaseModule):
    """Restore :class:`CompressedTokens` outputs of a token-reduction backbone to full grids.

    With ``restore_outputs=False`` (``pm_cfg.restore_outputs=False`` for ``PruneMergeViT``) the
    backbone hands an ``out_indices`` output taken while reduction steps are open as reduced
    tokens ``(B, P + K, C)``; this neck undoes the open steps (for Prune-and-Merge, the span's
    reconstruct matrix R and the pruned-token shortcut; Mao et al., IEEE TMM 2025, arXiv
    2503.23455) and returns ``(B, C, H/16, W/16)``, exactly what the backbone returns with
    ``restore_outputs=True``. Full-grid tensors pass through. The restored tuple then goes
    through ``neck`` (any mmseg neck, e.g. ``MultiLevelNeck`` for UPerNet-ViT / SETR-MLA), if
    given.

    Args:
        neck (dict, optional): config of a neck applied after the restoration. Default: None.
        init_cfg (dict, optional): mmengine init config. Default: None.
    """

    def __init__(self, neck: Optional[dict] = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.neck = MODELS.build(neck) if neck is not None else None

    def forward(self, inputs):
        """Args: inputs (tuple): backbone outputs (Tensor or CompressedTokens).

        Returns:
            tuple: full-grid outputs, after ``neck`` if configured.
        """
        outs = tuple(x.restore() if isinstance(x, CompressedTokens) else x for x in inputs)
        return self.neck(outs) if self.neck is not None else outs
