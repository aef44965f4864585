"""Each value is checked once, by the function that takes it as an argument; the config layer re-states the
error with the config key. The same bad value gives the argument's name from the plain builders and the
key's name from a config."""
import pytest

from ge_detectron.config import GEConfigError, get_ge_cfg
from ge_detectron.layers import GatherExcite
from ge_detectron.modeling import make_ge_resnet_stages

CASES = [  # (plain argument, config key, bad value, what the message says is allowed)
    ("res5_dilation", "MODEL.RESNETS.RES5_DILATION", 3, "use 1 or 2"),
    ("depth", "MODEL.RESNETS.DEPTH", 34, "GE sits in bottleneck blocks"),
    ("ge_global_input_size", "MODEL.GE.GLOBAL_INPUT_SIZE", 100, "use a positive multiple of 32"),
    ("ge_stages", "MODEL.GE.STAGES", ["res2", "res2"], "give distinct names"),
]


@pytest.mark.parametrize("argument,key,value,allowed", CASES)
def test_builder_names_the_argument_and_config_names_the_key(argument, key, value, allowed):
    with pytest.raises(ValueError, match=rf"^{argument}={value!r} is invalid: {allowed}".replace("[", r"\[")):
        make_ge_resnet_stages(**{argument: value})
    with pytest.raises(GEConfigError, match=rf"^{key} = {value!r} is invalid: {allowed}".replace("[", r"\[")):
        get_ge_cfg("configs/faster_rcnn_ge_r50.yaml", [key, value])


@pytest.mark.parametrize("argument,key,value", [("reduction", "MODEL.GE.REDUCTION", 0), ("fused", "MODEL.GE.FUSED", "x"),
                                                ("norm", "MODEL.GE.NORM", "LayerNormX")])
def test_gather_excite_arguments_and_their_keys(argument, key, value):
    with pytest.raises(ValueError, match=rf"^GatherExcite {argument}={value!r} is invalid"):
        GatherExcite(8, variant="theta_plus", **{argument: value})
    with pytest.raises(GEConfigError, match=rf"^{key} = {value!r} is invalid"):
        get_ge_cfg("configs/faster_rcnn_ge_r50.yaml", [key, value])


@pytest.mark.parametrize("key,value,message", [
    ("MODEL.GE.PADDING", "valid", "MODEL.GE.PADDING = 'valid' is invalid: allowed are 'symmetric', 'same'"),
    ("MODEL.GE.STEM_NORM_EPS", -1.0, "MODEL.GE.STEM_NORM_EPS = -1.0 is invalid: use a positive float"),
    ("MODEL.GE.GATHER_MAX_KERNEL", -28, "MODEL.GE.GATHER_MAX_KERNEL = -28 is invalid: use 0 \\(no limit\\)"),
])
def test_reproduction_options_name_their_keys(key, value, message):
    with pytest.raises(GEConfigError, match="^" + message):
        get_ge_cfg("configs/faster_rcnn_ge_r50.yaml", [key, value])


@pytest.mark.parametrize("argument", ["mlp_bias", "theta_plus_relu"])
def test_boolean_options_are_booleans(argument):
    # From a YAML config, yacs already rejects a non-boolean value for these keys (their default is a bool).
    with pytest.raises(ValueError, match=rf"^GatherExcite {argument}=1 is invalid: use True or False"):
        GatherExcite(8, variant="theta_plus", **{argument: 1})
