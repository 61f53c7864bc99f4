"""Model zoo: the SI paper's networks as neural-tangents stax models, reproducible from a seed.

Every model is an ``apply_fn(params, x)`` on a pytree of parameters, so everything downstream
(features, training, influence) also works for flax/equinox modules through their apply.
Images are NHWC; MLPs flatten their input first.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

__all__ = ["Model", "mlp", "cnn", "resnet", "get_model", "MODEL_NAMES", "init_params"]


@dataclasses.dataclass(frozen=True)
class Model:
    """A network: ``init_fn(key, input_shape) -> (output_shape, params)`` and ``apply_fn(params, x)``."""

    name: str
    init_fn: Callable
    apply_fn: Callable
    num_outputs: int


def _stax():
    from neural_tangents import stax  # imported here: neural-tangents pulls in TensorFlow

    return stax


def mlp(num_outputs: int = 1, width: int = 1024) -> Model:
    """One hidden layer of ``width`` ReLU units (SI paper §6, App. A.3), NTK parameterization."""
    stax = _stax()
    init_fn, apply_fn, _ = stax.serial(
        stax.Flatten(), stax.Dense(width), stax.Relu(), stax.Dense(num_outputs)
    )
    return Model("mlp", init_fn, apply_fn, num_outputs)


def cnn(num_outputs: int = 1) -> Model:
    """The 4-conv + 2-FC CNN of SI paper App. A.3 (NHWC input, e.g. 28x28x1).

    Conv 32@4x4/2, Conv 32@4x4/2 (``SAME`` equals the paper's padding 1 at stride 2 on even sizes),
    Conv 64@3x3, Conv 256@3x3 (valid), FC 256, FC ``num_outputs``; ReLU after every hidden layer.
    """
    stax = _stax()
    init_fn, apply_fn, _ = stax.serial(
        stax.Conv(32, (4, 4), (2, 2), "SAME"), stax.Relu(),
        stax.Conv(32, (4, 4), (2, 2), "SAME"), stax.Relu(),
        stax.Conv(64, (3, 3), (1, 1), "VALID"), stax.Relu(),
        stax.Conv(256, (3, 3), (1, 1), "VALID"), stax.Relu(),
        stax.Flatten(),
        stax.Dense(256), stax.Relu(),
        stax.Dense(num_outputs),
    )
    return Model("cnn", init_fn, apply_fn, num_outputs)


def resnet(num_outputs: int = 1, channels: int = 32, blocks: int = 2) -> Model:
    """A small ResNet-style network: a stem conv, ``blocks`` residual blocks, global average pool."""
    stax = _stax()

    def block():
        main = stax.serial(
            stax.Relu(), stax.Conv(channels, (3, 3), padding="SAME"),
            stax.Relu(), stax.Conv(channels, (3, 3), padding="SAME"),
        )
        return stax.serial(stax.FanOut(2), stax.parallel(main, stax.Identity()), stax.FanInSum())

    init_fn, apply_fn, _ = stax.serial(
        stax.Conv(channels, (3, 3), padding="SAME"),
        *[block() for _ in range(blocks)],
        stax.Relu(), stax.GlobalAvgPool(), stax.Dense(num_outputs),
    )
    return Model("resnet", init_fn, apply_fn, num_outputs)


MODEL_NAMES = {"mlp": mlp, "cnn": cnn, "resnet": resnet}


def get_model(name: str, num_outputs: int = 1, **kwargs: Any) -> Model:
    """Model by name (``mlp``, ``cnn``, ``resnet``) or ``package.module:factory`` returning a Model."""
    if ":" in name:
        import importlib

        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"model {name!r}: cannot load factory {attr!r} from {module_name!r} ({err})") from err
        model = factory(num_outputs=num_outputs, **kwargs)
        if not isinstance(model, Model):
            raise ValueError(f"model {name!r}: factory returned {type(model).__name__}, expected ntk_info.models.Model")
        return model
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODEL_NAMES))} "
                         "or 'package.module:factory'")
    return MODEL_NAMES[name](num_outputs=num_outputs, **kwargs)


def init_params(model: Model, input_shape: tuple[int, ...], seed: int = 0):
    """Initial parameters for inputs of shape ``input_shape`` (without the batch axis), from ``seed``."""
    _, params = model.init_fn(jax.random.PRNGKey(seed), (-1, *input_shape))
    return params
