# Segmenter Mask ViT-S/16 (Strudel et al., ICCV 2021) as in mmseg's
# configs/_base_/models/segmenter_vit-b16_mask.py +
# segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py,
# with fused attention (F.scaled_dot_product_attention) in the backbone and the mask head: same
# parameters, checkpoints and outputs (within float rounding) as mmseg's VisionTransformer /
# SegmenterMaskTransformerHead. TokenReductionViT without token_reduction is mmseg's ViT.
# The backbone starts from the AugReg ImageNet-21k ViT-S/16@384 weights converted by mmseg
# (a local file: no downloads at run time; see README "Pretrained weights").
checkpoint = 'checkpoints/vit_small_p16_384_20220308-410f6037.pth'
backbone_norm_cfg = dict(type='LN', eps=1e-6, requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=checkpoint,
    backbone=dict(
        type='TokenReductionViT',
        img_size=(512, 512),
        patch_size=16,
        in_channels=3,
        embed_dims=384,
        num_layers=12,
        num_heads=6,
        drop_path_rate=0.1,
        attn_drop_rate=0.0,
        drop_rate=0.0,
        final_norm=True,
        norm_cfg=backbone_norm_cfg,
        with_cls_token=True,
        interpolate_mode='bicubic'),
    decode_head=dict(
        type='FusedSegmenterMaskTransformerHead',
        in_channels=384,
        channels=384,
        num_classes=150,
        num_layers=2,
        num_heads=6,
        embed_dims=384,
        dropout_ratio=0.0,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(480, 480)))
