"""Adapters: any JAX model as the ``(apply_fn, params)`` pair that ``score`` and ``projected_features`` take.

Everything in ntk_info differentiates ``apply_fn(params, x) -> (batch, k)`` with respect to every
leaf of ``params`` (the parameters that are linearized) at their given values w0. The adapters build
that pair from a Flax Linen module and its variables, a Flax NNX module, or an Equinox module; what
is not a trainable floating-point parameter (BatchNorm statistics, other Flax collections, NNX
non-``Param`` state, Equinox activation functions, integer buffers) is frozen: closed over by
``apply_fn`` at its current value, never linearized, never a feature. Frozen arrays become
compile-time constants of every jitted function that calls ``apply_fn`` (fine for statistics and
moderate frozen bodies; each megabyte adds to compile time).

A ``mask`` (on every adapter, or :func:`linearize_subset` for a plain ``apply_fn``) chooses which
parameter leaves are linearized. With S the masked leaves and the others frozen at their values,
the linearized network is f(x) = f0(x) + Σ_{ℓ∈S} J_ℓ(x)(w_ℓ - w0_ℓ): the features Φ and the NTK
K_S = Σ_{ℓ∈S} J_ℓ J_ℓᵀ hold the masked leaves' Jacobians only, the weight decay (λ/2)||w_S - w0_S||²
and SI = ½||Δw_S||²/σ² count only them, and leave-one-out means retraining only the masked
leaves, the frozen ones fixed — the "pretrained body, fine-tuned head" setting. For a head that is
linear in its weights (a final Dense layer) the linearization is then exact: the LOO is the real
network's.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

__all__ = ["from_flax", "from_equinox", "linearize_subset", "selected_leaves"]


def linearize_subset(apply_fn: Callable, params, mask) -> tuple[Callable, Any]:
    """``(apply_fn_sub, params_sub)``: the network as a function of the masked parameter leaves only.

    ``mask`` is either a pytree of bools with the structure of ``params`` or a prefix of it (one
    bool for a whole sub-tree, e.g. ``{"body": False, "head": True}``), or a callable
    ``mask(name) -> bool`` on each leaf's name as ``jax.tree_util.keystr`` writes it (the names
    ``Projection.leaf_names`` shows, e.g. ``"['head']['kernel']"``). ``params_sub`` keeps the
    structure of ``params`` with the unselected leaves replaced by None (so leaf names are kept);
    ``apply_fn_sub(params_sub, x)`` puts the frozen leaves back at their values in ``params``.
    How features and leave-one-out change: see the module docstring.

    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: jnp.tanh(x @ p["body"]) @ p["head"]
    >>> params = {"body": jnp.ones((3, 4)), "head": jnp.ones((4, 2))}
    >>> apply_sub, sub = linearize_subset(apply_fn, params, {"body": False, "head": True})
    >>> sub["body"] is None, sub["head"].shape
    (True, (4, 2))
    >>> bool(jnp.allclose(apply_sub(sub, jnp.ones((5, 3))), apply_fn(params, jnp.ones((5, 3)))))
    True
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable apply_fn(params, x), got {type(apply_fn).__name__}")
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not path_leaves:
        raise ValueError("params: no parameter leaves (empty pytree); pass the model's parameters")
    names = [jax.tree_util.keystr(path) or "params" for path, _ in path_leaves]
    selected = selected_leaves(params, mask)
    if not any(selected):
        raise ValueError(f"mask: selects none of the {len(names)} parameter leaves ({', '.join(names[:6])}"
                         f"{', ...' if len(names) > 6 else ''}); select at least one")
    leaves = [leaf for _, leaf in path_leaves]
    params_sub = treedef.unflatten([leaf if keep else None for leaf, keep in zip(leaves, selected)])
    sub_treedef = jax.tree_util.tree_structure(params_sub)
    frozen = [None if keep else leaf for leaf, keep in zip(leaves, selected)]

    def apply_fn_sub(p_sub, x):
        try:
            sub_leaves = iter(sub_treedef.flatten_up_to(p_sub))
        except (ValueError, TypeError) as err:
            raise ValueError(f"params_sub: expected the structure linearize_subset returned ({sub_treedef}), "
                             f"got {jax.tree_util.tree_structure(p_sub)}") from err
        return apply_fn(treedef.unflatten([next(sub_leaves) if keep else value
                                           for value, keep in zip(frozen, selected)]), x)

    return apply_fn_sub, params_sub


def selected_leaves(params, mask) -> list[bool]:
    """One bool per leaf of ``params`` (``jax.tree_util.tree_leaves`` order): is it selected by ``mask``?

    ``mask``: a pytree of bools with the structure of ``params`` or a prefix of it, or a callable
    ``mask(name) -> bool`` on ``jax.tree_util.keystr`` leaf names (see :func:`linearize_subset`).
    """
    if callable(mask):
        names = [jax.tree_util.keystr(path) or "params" for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        selected = [mask(name) for name in names]
        bad = [(name, value) for name, value in zip(names, selected) if not _is_bool(value)]
        if bad:
            raise TypeError(f"mask: the callable must return a bool per leaf name, got {bad[0][1]!r} for "
                            f"{bad[0][0]}")
        return [bool(value) for value in selected]
    mask_leaves, mask_def = jax.tree_util.tree_flatten(mask)
    try:
        subtrees = mask_def.flatten_up_to(params)
    except (ValueError, TypeError) as err:
        raise ValueError(f"mask: expected a pytree of bools with the structure of params or a prefix of it "
                         f"(params: {jax.tree_util.tree_structure(params)}), got {mask_def}; or pass a "
                         "callable mask(name) -> bool") from err
    selected = []
    for value, subtree in zip(mask_leaves, subtrees):
        if not _is_bool(value):
            raise TypeError(f"mask: expected bool leaves, got {value!r} ({type(value).__name__})")
        selected += [bool(value)] * len(jax.tree_util.tree_leaves(subtree))
    return selected


def _is_bool(value) -> bool:
    return isinstance(value, bool) or (getattr(value, "shape", None) == () and getattr(value, "dtype", None) == bool)


def from_flax(module, variables=None, *, mask=None, call_kwargs: dict | None = None) -> tuple[Callable, Any]:
    """``(apply_fn, params)`` of a Flax module: Linen with its ``variables``, or NNX.

    Linen: ``params = variables["params"]`` is linearized; every other collection (``batch_stats``
    of BatchNorm, any frozen collection) is frozen, and ``apply_fn(p, x) =
    module.apply({**others, "params": p}, x, **call_kwargs)`` with no collection mutable. Call
    BatchNorm in inference mode (``use_running_average=True``, e.g. ``call_kwargs={"train":
    False}``): in training mode it normalizes with the batch's statistics, which would make
    f(x_i) depend on the other samples of a batch; that case raises a ValueError.

    NNX: the ``nnx.Param`` variables are linearized, as a plain nested dict
    (``nnx.to_pure_dict``; pass ``variables`` of that form, e.g. loaded with ``load_params``, to
    use other values), and all other state (``BatchStat``, RNG counts) is frozen. Put the module
    in inference mode first (``module.eval()``); a call that changes non-parameter state raises.

    ``mask``: which parameter leaves to linearize (:func:`linearize_subset`); ``call_kwargs``:
    keyword arguments for every call of the module. The module must return (batch, k).

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from ntk_info import projected_features
    >>> module = nn.Sequential([nn.Dense(4), nn.BatchNorm(use_running_average=True), nn.Dense(2)])
    >>> variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    >>> apply_fn, params = from_flax(module, variables)
    >>> sorted(params), sorted(variables)
    (['layers_0', 'layers_1', 'layers_2'], ['batch_stats', 'params'])
    >>> projected_features(apply_fn, params, jnp.ones((5, 3)), progress=False).phi.shape  # 16+8+10 params
    (5, 2, 34)
    >>> apply_head, head = from_flax(module, variables, mask={"layers_0": False, "layers_1": False,
    ...                                                       "layers_2": True})
    >>> projected_features(apply_head, head, jnp.ones((5, 3)), progress=False).phi.shape  # kernel 8 + bias 2
    (5, 2, 10)

    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(0)),
    ...                        nnx.Linear(4, 2, rngs=nnx.Rngs(0)))
    >>> model.eval()
    >>> apply_fn, params = from_flax(model)
    >>> apply_fn(params, jnp.ones((5, 3))).shape
    (5, 2)
    """
    from flax import linen, nnx

    call_kwargs = dict(call_kwargs or {})
    if isinstance(module, nnx.Module):
        apply_fn, params = _from_nnx(module, variables, call_kwargs)
    elif isinstance(module, linen.Module):
        apply_fn, params = _from_linen(module, variables, call_kwargs)
    else:
        raise TypeError(f"module: expected a flax.linen.Module or flax.nnx.Module, got {type(module).__name__}; "
                        "for an Equinox module use from_equinox, for a plain function apply_fn(params, x) use it as is")
    return (apply_fn, params) if mask is None else linearize_subset(apply_fn, params, mask)


def _from_linen(module, variables, call_kwargs):
    from flax.errors import ModifyScopeVariableError

    if not hasattr(variables, "keys") or "params" not in variables:
        raise ValueError("variables: expected the dict module.init(...) returns, with a 'params' collection, got "
                         f"{type(variables).__name__}" + (f" with collections {sorted(variables)}"
                                                          if hasattr(variables, "keys") else ""))
    frozen = {name: value for name, value in variables.items() if name != "params"}

    def apply_fn(params, x):
        try:
            return module.apply({**frozen, "params": params}, x, **call_kwargs)
        except ModifyScopeVariableError as err:
            raise ValueError(f"from_flax: the Linen module tried to update a frozen collection ({err}). Call it "
                             "in inference mode (BatchNorm(use_running_average=True), e.g. call_kwargs={'train': "
                             "False}), so that f(x_i) depends on x_i alone") from err

    return apply_fn, variables["params"]


def _from_nnx(module, variables, call_kwargs):
    from flax import nnx

    graphdef, param_state, rest = nnx.split(module, nnx.Param, ...)
    own = nnx.to_pure_dict(param_state)
    if variables is None:
        params = own
    else:
        if jax.tree_util.tree_structure(variables) != jax.tree_util.tree_structure(own):
            raise ValueError("variables: for an NNX module, expected its parameters as a pure dict with the "
                             f"structure of nnx.to_pure_dict(nnx.state(module, nnx.Param)) "
                             f"({jax.tree_util.tree_structure(own)}), got {jax.tree_util.tree_structure(variables)}")
        params = variables
    rest_leaves = jax.tree_util.tree_leaves(rest)

    def apply_fn(p, x):
        model = nnx.merge(graphdef, p, rest, copy=True)
        out = model(x, **call_kwargs)
        after = jax.tree_util.tree_leaves(nnx.split(model, nnx.Param, ...)[2])
        if len(after) != len(rest_leaves) or any(a is not b for a, b in zip(after, rest_leaves)):
            raise ValueError("from_flax: the NNX module changed its non-parameter state (BatchNorm statistics, an "
                             "RNG count) when called; put it in inference mode first (module.eval()), so that "
                             "f(x_i) depends on x_i alone")
        return out

    return apply_fn, params


def from_equinox(model, *, mask=None, per_sample: bool = True) -> tuple[Callable, Any]:
    """``(apply_fn, params)`` of an Equinox module: its floating-point arrays are the parameters.

    ``eqx.partition(model, eqx.is_inexact_array)`` splits the model into ``params`` (every float
    array; None elsewhere) and the rest (activation functions, sizes, integer arrays), which is
    frozen. Equinox modules take one sample: with ``per_sample=True`` (default) ``apply_fn(p, x)``
    is ``jax.vmap(model)(x)``, otherwise ``model(x)`` on the batch; each sample's output is
    flattened to k values ((batch,) outputs become (batch, 1)). Stateful layers (``eqx.nn.BatchNorm``
    with ``eqx.nn.State``) are not supported: fold their statistics into the weights, or wrap the
    model so it takes x alone. ``mask``: which parameter leaves to linearize (:func:`linearize_subset`).

    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.MLP(3, 2, width_size=4, depth=1, key=jax.random.PRNGKey(0))
    >>> apply_fn, params = from_equinox(model)
    >>> apply_fn(params, jnp.ones((5, 3))).shape
    (5, 2)
    >>> from ntk_info import projected_features
    >>> projected_features(apply_fn, params, jnp.ones((5, 3)), progress=False).phi.shape  # 12+4+8+2 params
    (5, 2, 26)
    """
    import equinox as eqx

    if not isinstance(model, eqx.Module):
        raise TypeError(f"model: expected an equinox.Module, got {type(model).__name__}; for Flax use from_flax, "
                        "for a plain function apply_fn(params, x) use it as is")
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def apply_fn(p, x):
        module = eqx.combine(p, static)
        out = jax.vmap(module)(x) if per_sample else module(x)
        return out.reshape(out.shape[0], -1)

    return (apply_fn, params) if mask is None else linearize_subset(apply_fn, params, mask)
