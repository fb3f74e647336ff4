"""Checkpoint converters: timm / Segmenter / official Prune-and-Merge layouts -> mmseg keys, and
the pretrained-weight loader of the token-reduction backbones."""
