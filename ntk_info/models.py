"""Model zoo: the SI paper's networks in plain JAX, NTK parameterization, reproducible from a seed.

Every model is an ``apply_fn(params, x)`` on a pytree of parameters, so everything downstream
(features, training, influence) works the same for Flax / Equinox modules through their apply.
Images are NHWC; MLPs flatten their input first.

Parameterization (Jacot et al. 2018; neural-tangents stax with ``W_std=1``, no bias): every weight
is drawn from N(0, 1) and the layer computes ``x @ W / sqrt(fan_in)`` (Dense) or
``conv(x, W) / sqrt(fan_in)`` with fan_in = in_channels · filter size (Conv). The parameters keep
stax's layout — a list with one entry per layer, ``()`` for parameter-free layers and ``(W, None)``
for Dense / Conv (W as (in, out) or HWIO) — so that weights move between the two unchanged and
``tests/test_models_nt.py`` can check that both give the same network and NTK.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Model", "mlp", "cnn", "resnet", "get_model", "MODEL_NAMES", "init_params"]


@dataclasses.dataclass(frozen=True)
class Model:
    """A network: ``init_fn(key, input_shape) -> (output_shape, params)`` and ``apply_fn(params, x)``."""

    name: str
    init_fn: Callable
    apply_fn: Callable
    num_outputs: int


# ----------------------------------------------------------------------------- layers
# A layer is (init(key, shape) -> (out_shape, params), apply(params, x) -> y), as in stax; ``dense``
# marks a Dense layer, whose kernel's per-sample Jacobian has the outer-product form of ``dense_factors``.


class _Layer(NamedTuple):
    init: Callable
    apply: Callable
    dense: bool = False


def _dense(out_dim):
    def init(key, shape):
        return shape[:-1] + (out_dim,), (jax.random.normal(key, (shape[-1], out_dim)), None)

    def apply(params, x):
        W = params[0]
        return x @ W / math.sqrt(W.shape[0])

    return _Layer(init, apply, dense=True)


def _conv(out_chan, filter_shape, strides=(1, 1), padding="VALID"):
    def out_shape(shape):
        dummy = jax.ShapeDtypeStruct((1,) + tuple(shape[1:]), jnp.float32)
        kernel = jax.ShapeDtypeStruct(tuple(filter_shape) + (shape[-1], out_chan), jnp.float32)
        return shape[:1] + jax.eval_shape(lambda a, b: _conv_apply(a, b, strides, padding), dummy, kernel).shape[1:]

    def init(key, shape):
        W = jax.random.normal(key, tuple(filter_shape) + (shape[-1], out_chan))
        return out_shape(shape), (W, None)

    def apply(params, x):
        W = params[0]
        fan_in = W.shape[0] * W.shape[1] * W.shape[2]
        return _conv_apply(x, W, strides, padding) / math.sqrt(fan_in)

    return _Layer(init, apply)


def _conv_apply(x, W, strides, padding):
    return jax.lax.conv_general_dilated(x, W.astype(x.dtype), tuple(strides), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _stateless(fn, shape_fn=lambda shape: shape):
    return _Layer(lambda key, shape: (shape_fn(shape), ()), lambda params, x: fn(x))


_relu = _stateless(jax.nn.relu)
_flatten = _stateless(lambda x: x.reshape(x.shape[0], -1),
                      lambda shape: (shape[0], math.prod(shape[1:])))
_global_avg_pool = _stateless(lambda x: jnp.mean(x, axis=tuple(range(1, x.ndim - 1))),
                              lambda shape: (shape[0], shape[-1]))


def _serial(*layers):
    def init(key, shape):
        params = []
        for layer, layer_key in zip(layers, jax.random.split(key, len(layers))):
            shape, p = layer.init(layer_key, shape)
            params.append(p)
        return shape, params

    def apply(params, x):
        for layer, p in zip(layers, params):
            x = layer.apply(p, x)
        return x

    def dense_factors(params, x):
        """f(x) (b, k) and, per Dense kernel leaf ℓ (its index in ``tree_leaves(params)``), the factors
        (a, g) of its per-sample Jacobian: ∂f_k(x_i)/∂W_ℓ[u, v] = a_i[u] · g_ik[v], with a (b, in) the
        layer's input divided by sqrt(in) and g (b, k, out) the gradient of f_k with respect to the
        layer's output (one forward pass, k backward passes; no (b, k, in·out) array)."""

        def forward(taps):
            inputs, h, tap = [], x, iter(taps)
            for layer, p in zip(layers, params):
                if layer.dense:
                    if h.ndim != 2:
                        raise ValueError(f"dense_factors: a Dense layer on inputs of shape {h.shape}; flatten first")
                    a = h / math.sqrt(p[0].shape[0])
                    inputs.append(a)
                    h = a @ p[0] + next(tap)
                else:
                    h = layer.apply(p, h)
            return h, inputs

        widths = [p[0].shape[1] for layer, p in zip(layers, params) if layer.dense]
        taps = [jnp.zeros((x.shape[0], w), x.dtype) for w in widths]
        out, vjp_fn, inputs = jax.vjp(forward, taps, has_aux=True)
        k = out.shape[1]
        (grads,) = jax.vmap(vjp_fn)(jnp.broadcast_to(jnp.eye(k, dtype=out.dtype)[:, None, :], (k, *out.shape)))
        leaf_index, factors = 0, {}
        dense_layers = iter(zip(inputs, grads))
        for layer, p in zip(layers, params):
            if layer.dense:
                a, g = next(dense_layers)
                factors[leaf_index] = (a, jnp.moveaxis(g, 0, 1))
            leaf_index += len(jax.tree_util.tree_leaves(p))
        return out, factors

    if any(layer.dense for layer in layers):
        apply.dense_factors = dense_factors
    return _Layer(init, apply)


def _residual(*layers):
    """x + main(x): params are the main branch's list (stax FanOut/parallel/FanInSum has the same network)."""
    main = _serial(*layers)
    return _Layer(main.init, lambda params, x: x + main.apply(params, x))


# ----------------------------------------------------------------------------- the zoo


def mlp(num_outputs: int = 1, width: int = 1024) -> Model:
    """One hidden layer of ``width`` ReLU units (SI paper §6, App. A.3), NTK parameterization."""
    net = _serial(_flatten, _dense(width), _relu, _dense(num_outputs))
    return Model("mlp", net.init, net.apply, num_outputs)


def cnn(num_outputs: int = 1) -> Model:
    """The 4-conv + 2-FC CNN of SI paper App. A.3 (NHWC input, e.g. 28x28x1).

    Conv 32@4x4/2, Conv 32@4x4/2 (``SAME`` equals the paper's padding 1 at stride 2 on even sizes),
    Conv 64@3x3, Conv 256@3x3 (valid), FC 256, FC ``num_outputs``; ReLU after every hidden layer.
    """
    net = _serial(
        _conv(32, (4, 4), (2, 2), "SAME"), _relu,
        _conv(32, (4, 4), (2, 2), "SAME"), _relu,
        _conv(64, (3, 3), (1, 1), "VALID"), _relu,
        _conv(256, (3, 3), (1, 1), "VALID"), _relu,
        _flatten,
        _dense(256), _relu,
        _dense(num_outputs),
    )
    return Model("cnn", net.init, net.apply, num_outputs)


def resnet(num_outputs: int = 1, channels: int = 32, blocks: int = 2) -> Model:
    """A small ResNet-style network: a stem conv, ``blocks`` pre-activation residual blocks
    (x + conv(relu(conv(relu(x))))), ReLU, global average pool, a dense head."""

    def block():
        return _residual(_relu, _conv(channels, (3, 3), padding="SAME"), _relu,
                         _conv(channels, (3, 3), padding="SAME"))

    net = _serial(
        _conv(channels, (3, 3), padding="SAME"),
        *[block() for _ in range(blocks)],
        _relu, _global_avg_pool, _dense(num_outputs),
    )
    return Model("resnet", net.init, net.apply, num_outputs)


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
