"""Where the pipeline linearizes: --init checkpoints and --pretrain-classes (pretrained body, fresh head)."""
import jax
import numpy as np
import pytest

from ntk_info.apps.pipeline import ConfigError, Pipeline, PipelineConfig, load_data
from ntk_info.checkpoint import save_params
from ntk_info.cli import _config, build_parser
from ntk_info.models import get_model, init_params

SMALL = dict(data="digits", classes=("4", "9"), n_train=40, width=16, steps=20, coords_per_layer=100)


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_init_checkpoint_becomes_w0(tmp_path):
    saved = init_params(get_model("mlp", 2, width=16), (8, 8, 1), seed=7)
    save_params(tmp_path / "w.npz", saved)
    config = PipelineConfig(**SMALL, init=str(tmp_path / "w.npz"))
    pipe = Pipeline(config, load_data(config), progress=False)
    for a, b in zip(leaves(pipe.params0), leaves(saved)):
        np.testing.assert_array_equal(a, b)
    assert pipe.settings()["w0"] == "checkpoint" and pipe.settings()["init"].endswith("w.npz")
    wider = init_params(get_model("mlp", 2, width=32), (8, 8, 1), seed=7)
    save_params(tmp_path / "wide.npz", wider)
    config = PipelineConfig(**SMALL, init=str(tmp_path / "wide.npz"))
    with pytest.raises(ConfigError, match=r"init: .*leaf \[1\]\[0\] has shape \(64, 32\) in the file, like expects "
                                          r"\(64, 16\).*--width 16"):
        Pipeline(config, load_data(config), progress=False)


def test_pretrain_classes_train_the_body_and_keep_a_fresh_head():
    config = PipelineConfig(**SMALL, pretrain_classes=("0", "1", "2"), pretrain_steps=200)
    pipe = Pipeline(config, load_data(config), progress=False)
    fresh = init_params(get_model("mlp", 2, width=16), (8, 8, 1), seed=0)  # the task model's random init
    np.testing.assert_array_equal(leaves(pipe.params0)[-1], leaves(fresh)[-1])  # head: fresh
    assert leaves(pipe.params0)[0].shape == leaves(fresh)[0].shape
    assert not np.allclose(leaves(pipe.params0)[0], leaves(fresh)[0])  # body: pretrained, not the init
    settings = pipe.settings()
    assert settings["w0"] == "pretrained on other classes, fresh head"
    assert settings["pretrain_classes"] == ["0", "1", "2"] and settings["pretrain_steps"] == 200
    assert settings["pretrain_train_accuracy"] > 0.9  # three digit classes are easy: the body learned them


def test_config_errors_and_cli_options(tmp_path):
    with pytest.raises(ConfigError, match="pretrain_classes: classes \\['4'\\] are also task classes"):
        PipelineConfig(**SMALL, pretrain_classes=("4", "5")).validate()
    with pytest.raises(ConfigError, match="pass --classes too"):
        PipelineConfig(**{**SMALL, "classes": None}, pretrain_classes=("0", "1")).validate()
    with pytest.raises(ConfigError, match="init: no such checkpoint"):
        PipelineConfig(**SMALL, init=str(tmp_path / "missing.npz")).validate()
    save_params(tmp_path / "w.npz", {"w": np.ones(2)})
    with pytest.raises(ConfigError, match="drop --init"):
        PipelineConfig(**SMALL, init=str(tmp_path / "w.npz"), pretrain_classes=("0", "1")).validate()
    args = build_parser().parse_args(["score", "--out", str(tmp_path / "out"), "--classes", "4,9",
                                      "--pretrain-classes", "0, 1,2", "--pretrain-steps", "50"])
    config = _config(args)
    assert config.pretrain_classes == ("0", "1", "2") and config.pretrain_steps == 50 and config.init is None
    args = build_parser().parse_args(["score", "--out", str(tmp_path / "out"), "--init", str(tmp_path / "w.npz")])
    assert _config(args).init == str(tmp_path / "w.npz")
