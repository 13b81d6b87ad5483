"""Registry: every preset builds, names and fields are validated, overrides and dtype strings work."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from diffjax.models import build_model, get_preset, list_models, list_presets, model_fields
from diffjax.models.registry import MODELS


def test_every_preset_builds_its_model():
    assert len(list_presets()) >= 30
    for name in list_presets():
        cfg = get_preset(name)
        m = build_model(cfg)
        assert isinstance(m, MODELS[cfg.name])


def test_registry_names():
    assert set(list_models()) == {"unet", "unet1d", "unet2d", "dit", "pixart", "dico", "dimr",
                                  "noisy_classifier", "classifier", "token_transformer"}


def test_required_presets_exist():
    for name in ("unet_tiny16", "unet_small32", "ddpm_cifar10", "adm_imagenet64", "dit_s_2",
                 "dit_b_4", "dit_l_8", "dit_xl_2", "pixart_xl_2", "dico_s", "dico_xl", "dimr_xl_2r",
                 "unet1d_tiny", "noisy_classifier_tiny", "classifier_tiny"):
        assert name in list_presets(), name


def test_unknown_model_name_raises_naming_it():
    with pytest.raises(ValueError, match="no_such_net"):
        build_model(ml_collections.ConfigDict({"name": "no_such_net"}))
    with pytest.raises(ValueError, match="name"):
        build_model({"hidden_size": 3})


def test_unknown_field_raises_naming_it():
    with pytest.raises(ValueError, match="hiden_size"):
        build_model({"name": "dit", "hiden_size": 64})


def test_unknown_preset_raises_naming_it():
    with pytest.raises(ValueError, match="dit_xxl_2"):
        get_preset("dit_xxl_2")


def test_preset_is_locked_and_complete():
    cfg = get_preset("dit_tiny")
    assert set(model_fields("dit")) <= set(cfg.keys())
    cfg.learn_sigma = True            # existing field: allowed
    with pytest.raises((AttributeError, KeyError)):
        cfg.hidden_sise = 3           # typo: rejected by the locked ConfigDict
    assert build_model(cfg).learn_sigma


def test_dtype_strings_and_lists():
    m = build_model({"name": "dico", "depths": [1, 1, 1, 1, 1], "dtype": "bfloat16"})
    assert m.depths == (1, 1, 1, 1, 1)
    assert jnp.dtype(m.dtype) == jnp.bfloat16
    assert jnp.dtype(m.param_dtype) == jnp.float32


def test_presets_default_to_output_shape_of_input():
    for name in list_presets():
        cfg = get_preset(name)
        if "learn_sigma" in cfg:
            assert cfg.learn_sigma is False, name


@pytest.mark.parametrize("preset", [p for p in list_presets()
                                    if "tiny" in p or "small" in p or p in ("ddpm_cifar10",
                                                                            "noisy_classifier32")])
def test_small_preset_output_shape(preset):
    """Shapes via eval_shape (traced, not compiled) at each preset's own input shape."""
    from diffjax.models.registry import example_inputs
    cfg = get_preset(preset)
    m = build_model(cfg)
    args = example_inputs(m, cfg.input_shape, batch=2)
    out = jax.eval_shape(lambda k: m.apply(m.init(k, *args), *args), jax.random.PRNGKey(0))
    expected = (2, cfg.num_classes) if "classifier" in cfg.name else (2,) + tuple(cfg.input_shape)
    assert out.shape == expected and out.dtype == jnp.float32
