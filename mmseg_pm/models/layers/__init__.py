from .attention import (AttentionTap, FusedMultiheadAttention, encoder_layer_forward,
                        fuse_attention, self_attention)

__all__ = ['AttentionTap', 'FusedMultiheadAttention', 'encoder_layer_forward', 'fuse_attention',
           'self_attention']
