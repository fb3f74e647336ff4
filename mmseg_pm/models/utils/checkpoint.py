"""Loading ImageNet-pretrained / Segmenter weights into ``PruneMergeViT`` (``init_cfg``)."""
from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict


def load_pretrained_backbone(backbone, path: str) -> None:
    """Load a pretrained backbone file into ``backbone`` (mmseg ViT key layout).

    ``pos_embed`` is resized to the backbone's grid as mmseg's ``VisionTransformer`` does.

    Raises:
        FileNotFoundError: missing file.
    """
    checkpoint = CheckpointLoader.load_checkpoint(path, logger=None, map_location='cpu')
    state_dict = checkpoint.get('state_dict', checkpoint)
    if 'pos_embed' in state_dict and backbone.pos_embed.shape != state_dict['pos_embed'].shape:
        h, w = backbone.img_size
        n = state_dict['pos_embed'].shape[1] - 1
        side = int(n**0.5)
        state_dict['pos_embed'] = backbone.resize_pos_embed(
            state_dict['pos_embed'], (h // backbone.patch_size, w // backbone.patch_size),
            (side, side), backbone.interpolate_mode)
    load_state_dict(backbone, state_dict, strict=False, logger=None)
