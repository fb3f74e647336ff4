"""Pure token maths of every token-reduction method: functions on ``(B, P + N, C)`` token tensors.

No ``nn.Module``, no registry, no mmseg import (the role of ToMe's ``merge.py``). Conventions:

* a token sequence has shape ``(B, P + n, C)``: ``P`` prefix tokens (the CLS token of mmseg's
  ``VisionTransformer`` with ``with_cls_token=True``, so ``P`` is 0 or 1) followed by ``n``
  patch tokens. Prefix tokens are never merged, pruned or dropped;
* a reduction step returns a :class:`~mmseg_pm.functional.common.Reduction`: the reduced
  tokens, their sizes (how many original patches each stands for) and, for every input patch
  token, the reduced token that carries it (``-1``: dropped; restored from the step's input).

Modules: :mod:`.common` (the record, restoring, shared helpers), :mod:`.prune_merge`
(Prune-and-Merge structures), :mod:`.prune_merge_sparse` and :mod:`.prune_merge_dense`
(applying them), :mod:`.tome` (ToMe), :mod:`.evit` (EViT), :mod:`.algm` (ALGM) and
:mod:`.mstm` (MSTM, a reconstruction).
"""
