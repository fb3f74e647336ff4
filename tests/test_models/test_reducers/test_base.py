"""TokenReducer (mmseg_pm.models.reducers.base)."""
import mmseg_pm  # noqa: F401
from mmseg_pm.models import TokenReductionViT


def test_settings_label_names_the_method_settings():
    tiny = dict(img_size=(64, 64), embed_dims=32, num_layers=4, num_heads=2)
    tome = TokenReductionViT(token_reduction=dict(type='ToMe', r=2), **tiny)
    assert tome.reducer.settings_label() == 'r=2, proportional_attention=True'
    pm_vit = TokenReductionViT(token_reduction=dict(type='PruneMerge'), **tiny)
    assert pm_vit.reducer.settings_label() == 'checkpoint'
