"""Random-projected per-layer Jacobian features Φ with K ≈ ΦΦᵀ, and the exact empirical NTK reference.

For a network ``apply_fn(params, x)`` with outputs (batch, k) and a pytree of parameters, the
Jacobian of sample i splits into per-leaf blocks J_iℓ (k × d_ℓ). Each leaf ℓ gets its own random
projection P_ℓ (d_ℓ × m_ℓ, m_ℓ = min(coords_per_layer, d_ℓ)) with E[P_ℓ P_ℓᵀ] = I, and

    Φ_i = [J_i1 P_1, ..., J_iL P_L]    (k × p, p = Σ_ℓ m_ℓ),    E[Φ_i Φ_jᵀ] = Σ_ℓ J_iℓ J_jℓᵀ = K_ij,

so ΦΦᵀ is an unbiased estimate of the empirical NTK K = JJᵀ (DESIGN.md, "Building the kernel";
SI paper §5 projects the Jacobian to a few thousand coordinates per layer). Layers are projected
separately because their gradient scales differ. Projections (``method``):

- ``"subsample"`` (the paper's): m_ℓ coordinates drawn uniformly without replacement,
  rescaled by sqrt(d_ℓ/m_ℓ) (each coordinate is kept with probability m_ℓ/d_ℓ, so unbiased).
- ``"countsketch"`` (default): coordinate c is added with a random sign s_c into one of m_ℓ buckets h(c),
  (J P)_b = Σ_{h(c)=b} s_c J_c (Charikar et al. 2002; Clarkson & Woodruff 2013); unbiased as
  E[s_c s_c'] = δ_cc'. Per leaf, Var[(ΦΦᵀ)_ij] ≈ (||J_i||²||J_j||² + K_ij² - 2Σ_c J_ic²J_jc²)/m_ℓ,
  a dense sketch's, whereas subsampling's ≈ (d_ℓ Σ_c J_ic²J_jc² - K_ij²)/m_ℓ grows with how
  concentrated the Jacobian is (always-zero pixels, inactive ReLUs). Buckets: a random balanced
  partition (position in a random permutation mod m_ℓ); cost O(d_ℓ) per sample (a gather and a sum),
  the cost of forming the leaf Jacobian. Measured on digits 4 vs 9 (MLP 1024, 2000 per leaf, 20
  seeds, ``experiments/fsi_projection_check.py``): F-SI Pearson with the exact NTK 0.993 (min 0.984)
  against subsampling's 0.971 (min 0.944), kernel error 0.018 against 0.043.
- ``"gaussian"`` / ``"rademacher"``: dense sketch with i.i.d. N(0, 1/m_ℓ) or ±1/sqrt(m_ℓ) entries.
  The sketch is never stored: it is regenerated from the leaf key in chunks of rows inside jit.

Leaves with d_ℓ <= coords_per_layer are kept whole (P_ℓ = I, rescale 1), which makes ΦΦᵀ = K
exactly when the budget covers every leaf. Leaf keys are ``jax.random.fold_in(key(seed), ℓ)``.

Samples are processed in batches (memory ~ batch · k · d, never n · d): a jitted function
computes the per-sample Jacobian of one batch (``vmap(jacrev)``) and projects it at once. The
batch axis is sharded over every device JAX sees (1-D ``Mesh`` over ``jax.devices()``; batches
are padded to a multiple of the device count), so the result does not depend on the device count.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["Projection", "Features", "projected_features", "exact_ntk", "kernel_relative_error", "METHODS",
           "ntk_lambda_max"]

METHODS = ("subsample", "countsketch", "gaussian", "rademacher")
_SKETCH_CHUNK = 2048  # rows of a dense sketch generated at once: memory chunk · m_ℓ per leaf
_BATCH_MEMORY_BYTES = 256 * 2**20  # per-batch Jacobian budget used to choose a default batch size


@dataclasses.dataclass(frozen=True)
class Features:
    """Projected features of ``n`` inputs: ``phi`` (n, k, p), ``outputs`` = f0 (n, k), and the projection."""

    phi: np.ndarray
    outputs: np.ndarray
    projection: "Projection"
    batch_size: int

    @property
    def p(self) -> int:
        """Total number of features p = Σ_ℓ m_ℓ."""
        return self.phi.shape[-1]


@dataclasses.dataclass(frozen=True, eq=False)
class Projection:
    """A fixed per-leaf projection of the Jacobian of ``apply_fn`` at ``params``; reuse it for new inputs.

    ``features(X)`` gives Φ for any inputs with the same coordinates (or the same sketch) as the
    training features, so cross kernels Φ_val Φᵀ are consistent. ``layer_sizes[ℓ]`` = m_ℓ,
    ``leaf_dims[ℓ]`` = d_ℓ, ``scales[ℓ]`` = sqrt(d_ℓ/m_ℓ) for subsampled leaves (else 1),
    ``indices[ℓ]`` the kept coordinates (subsample), or the (⌈d_ℓ/m_ℓ⌉, m_ℓ) table of coordinates
    per bucket (column b = bucket b, countsketch), or None (kept whole or dense sketch); ``signs[ℓ]``
    the table's signs ±1 (0 for padding entries) for countsketch, else None.
    """

    apply_fn: Callable
    params: Any
    method: str
    coords_per_layer: int
    seed: int
    leaf_names: tuple[str, ...]
    leaf_dims: tuple[int, ...]
    layer_sizes: tuple[int, ...]
    scales: tuple[float, ...]
    indices: tuple[Any, ...]
    signs: tuple[Any, ...]

    @property
    def p(self) -> int:
        """Total number of features p = Σ_ℓ m_ℓ."""
        return sum(self.layer_sizes)

    def settings(self) -> dict:
        """The projection's settings, for records (method, budget, seed, p and p per leaf)."""
        return {"projection_method": self.method, "coords_per_layer": self.coords_per_layer, "seed": self.seed,
                "p": self.p, "p_per_leaf": dict(zip(self.leaf_names, self.layer_sizes)),
                "leaf_dims": dict(zip(self.leaf_names, self.leaf_dims))}

    @property
    def factored(self) -> bool:
        """Whether Dense kernels are projected from ``apply_fn.dense_factors`` (zoo models; the
        subsample method, or every Dense kernel kept whole) rather than from full per-sample Jacobians."""
        dense = getattr(self.apply_fn, "dense_factors", None)
        return dense is not None and (self.method == "subsample" or all(
            m == d for m, d in zip(self.layer_sizes, self.leaf_dims)))

    def _memory_dims(self) -> int:
        """Floats per sample and output one batch holds: d_ℓ per Jacobian leaf, about m_ℓ + out_ℓ + in_ℓ
        per factored Dense kernel."""
        if not self.factored:
            return sum(self.leaf_dims)
        shapes = [np.shape(leaf) for leaf in jax.tree_util.tree_leaves(self.params)]
        return sum(m + sum(shape) if len(shape) == 2 else d
                   for m, d, shape in zip(self.layer_sizes, self.leaf_dims, shapes))

    def _sketch_keys(self):
        if self.method not in ("gaussian", "rademacher"):
            return None
        return jnp.stack([_leaf_key(self.seed, leaf) for leaf in range(len(self.leaf_dims))])

    def features(self, inputs, *, batch_size: int | None = None, progress: bool = True) -> Features:
        """Φ (n, k, p) and f0 (n, k) of ``inputs`` (n, ...) under this projection, in sharded batches."""
        inputs = _check_inputs(inputs, "inputs")
        k = _check_apply(self.apply_fn, self.params, inputs)
        n = inputs.shape[0]
        devices = jax.local_devices()  # this process's: a multi-process run shards samples by process
        batch_size = _resolve_batch_size(batch_size, n, k, self._memory_dims(), len(devices),
                                         jnp.result_type(*jax.tree_util.tree_leaves(self.params)).itemsize)
        mesh = Mesh(np.array(devices), ("batch",))
        data_sharding = NamedSharding(mesh, PartitionSpec("batch"))
        params = jax.device_put(self.params, NamedSharding(mesh, PartitionSpec()))
        replicated = NamedSharding(mesh, PartitionSpec())
        index_arrays = tuple(None if idx is None else jax.device_put(idx, replicated) for idx in self.indices)
        sign_arrays = tuple(None if sgn is None else jax.device_put(sgn, replicated) for sgn in self.signs)
        scales = jnp.asarray(self.scales)
        sketch_keys = self._sketch_keys()
        phi = outputs = None
        finite = np.ones(len(self.leaf_dims), bool)
        starts = range(0, n, batch_size)
        if progress and len(starts) > 1:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"projected features ({self.method}, p={self.p})", unit="batch")
        for start in starts:
            stop = min(start + batch_size, n)
            xb = inputs[start:stop]
            if stop - start < batch_size:  # pad with copies of the first row: one compiled shape
                pad = jnp.broadcast_to(xb[:1], (batch_size - (stop - start), *xb.shape[1:]))
                xb = jnp.concatenate([xb, pad])
            phi_b, out_b, finite_b = _project_batch(
                params, jax.device_put(xb, data_sharding), index_arrays, sign_arrays, scales, sketch_keys,
                apply_fn=self.apply_fn, method=self.method, layer_sizes=self.layer_sizes, factored=self.factored)
            phi_b, out_b = np.asarray(phi_b)[: stop - start], np.asarray(out_b)[: stop - start]
            if phi is None:
                phi = np.empty((n, *phi_b.shape[1:]), phi_b.dtype)
                outputs = np.empty((n, *out_b.shape[1:]), out_b.dtype)
            phi[start:stop], outputs[start:stop] = phi_b, out_b
            finite &= np.asarray(finite_b)
        if not finite.all():
            bad = [name for name, ok in zip(self.leaf_names, finite) if not ok]
            raise ValueError(f"non-finite Jacobian (NaN or inf) for parameter leaf(s) {', '.join(bad)}: "
                             "check params and inputs for NaN/inf, or a non-differentiable point of the model")
        if not np.isfinite(outputs).all():
            raise ValueError("apply_fn(params, inputs) returned NaN or inf outputs: check params and inputs")
        return Features(phi=phi, outputs=outputs, projection=self, batch_size=batch_size)


def _leaf_key(seed: int, leaf: int):
    """Key of leaf ℓ: fold_in(PRNGKey(seed), ℓ) (never seed + ℓ, whose streams collide across seeds)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), leaf)


def _single_output(apply_fn, params, x):
    """f(x) of shape (k,) for one input x (no batch axis)."""
    return apply_fn(params, x[None])[0]


@functools.partial(jax.jit, static_argnames=("apply_fn", "method", "layer_sizes", "factored"))
def _project_batch(params, xb, indices, signs, scales, sketch_keys, *, apply_fn, method, layer_sizes, factored):
    """Φ (b, k, p), f0 (b, k) and per-leaf finiteness (L,) of one batch; jitted, sample axis sharded.

    Per-sample Jacobians come from vmap(jacrev) (memory b·k·d for this batch only); each leaf block
    (b, k, d_ℓ) is projected right away: gathered and rescaled (subsample), gathered into the bucket
    table, signed and summed per bucket (countsketch), or multiplied by a dense sketch regenerated
    chunk by chunk from the leaf key (gaussian / rademacher). With ``factored``, Dense kernels come
    from ``apply_fn.dense_factors`` instead (J_iℓ[k, (u, v)] = a_i[u] g_ik[v]): a subsampled
    coordinate costs one product, and the (b, k, d_ℓ) block is never formed.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    factors = {}
    if factored:
        outputs, factors = apply_fn.dense_factors(params, xb)
    jacobians = {}
    others = [leaf for leaf in range(len(leaves)) if leaf not in factors]
    if others:
        def single(values, x):
            full = list(leaves)
            for leaf, value in zip(others, values):
                full[leaf] = value
            return _single_output(apply_fn, treedef.unflatten(full), x)

        values = jax.vmap(jax.jacrev(single), in_axes=(None, 0))([leaves[leaf] for leaf in others], xb)
        jacobians = dict(zip(others, values))
    blocks, finite = [], []
    for leaf, m in enumerate(layer_sizes):
        if leaf in factors:
            a, g = factors[leaf]  # (b, in), (b, k, out)
            finite.append(jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(g)))
            width = g.shape[-1]
            if m == a.shape[1] * width:
                blocks.append((a[:, None, :, None] * g[:, :, None, :]).reshape(*g.shape[:2], -1))
            else:  # subsample: coordinate c of the (in, out) kernel is (c // out, c % out)
                idx = indices[leaf]
                blocks.append(a[:, None, idx // width] * g[:, :, idx % width] * scales[leaf].astype(g.dtype))
            continue
        j_leaf = jacobians[leaf].reshape(*jacobians[leaf].shape[:2], -1)  # (b, k, d_ℓ)
        finite.append(jnp.all(jnp.isfinite(j_leaf)))
        d = j_leaf.shape[-1]
        if m == d:
            blocks.append(j_leaf)
        elif method == "subsample":
            blocks.append(j_leaf[..., indices[leaf]] * scales[leaf].astype(j_leaf.dtype))
        elif method == "countsketch":
            # multiply-and-sum: 2.5x faster than the equivalent einsum on XLA:CPU
            blocks.append((j_leaf[..., indices[leaf]] * signs[leaf].astype(j_leaf.dtype)).sum(axis=-2))
        else:
            blocks.append(_sketch(j_leaf, sketch_keys[leaf], m, method))
    if not factored:
        outputs = apply_fn(params, xb)
    return jnp.concatenate(blocks, axis=-1), outputs, jnp.stack(finite)


def _sketch(j_leaf, key, m, method):
    """J_ℓ P_ℓ for a dense sketch P_ℓ (d_ℓ × m) with E[P Pᵀ] = I, generated in row chunks (never stored)."""
    b, k, d = j_leaf.shape
    chunk = min(_SKETCH_CHUNK, d)
    num_chunks = -(-d // chunk)
    j_pad = jnp.pad(j_leaf, ((0, 0), (0, 0), (0, num_chunks * chunk - d)))  # zero rows: no contribution
    j_chunks = jnp.moveaxis(j_pad.reshape(b, k, num_chunks, chunk), 2, 0)
    scale = 1.0 / math.sqrt(m)

    def body(acc, xs):
        c, j_c = xs
        chunk_key = jax.random.fold_in(key, c)
        if method == "gaussian":
            p_c = jax.random.normal(chunk_key, (chunk, m), j_leaf.dtype)
        else:
            p_c = jax.random.rademacher(chunk_key, (chunk, m), j_leaf.dtype)
        return acc + jnp.einsum("bkc,cm->bkm", j_c, p_c) * scale, None

    acc0 = jnp.zeros((b, k, m), j_leaf.dtype)
    return jax.lax.scan(body, acc0, (jnp.arange(num_chunks), j_chunks))[0]


def _check_inputs(inputs, name):
    """``inputs`` as a jax array; ValueError naming ``name`` for a scalar, no rows, a non-numeric dtype,
    or rows holding NaN/inf (which would otherwise surface as a non-finite Jacobian)."""
    if not hasattr(inputs, "shape") or not hasattr(inputs, "dtype"):
        try:
            inputs = np.asarray(inputs)
        except ValueError as err:  # ragged nested lists
            raise ValueError(f"{name}: expected a rectangular numeric array (n, ...), got {type(inputs).__name__} "
                             f"that numpy cannot convert ({err})") from err
    if inputs.ndim < 1:
        raise ValueError(f"{name}: expected an array of shape (n, ...), got a scalar")
    if inputs.shape[0] == 0:
        raise ValueError(f"{name}: empty data (0 samples); pass at least one input of shape (n, ...)")
    dtype = np.dtype(inputs.dtype)
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {dtype}; convert it first, e.g. "
                         f"np.asarray({name}, dtype=np.float32)")
    if np.issubdtype(dtype, np.inexact):
        finite = np.asarray(jnp.isfinite(jnp.asarray(inputs)).reshape(inputs.shape[0], -1).all(axis=1))
        if not finite.all():
            rows = np.flatnonzero(~finite)
            raise ValueError(f"{name}: {rows.size} of {inputs.shape[0]} rows contain NaN or inf (rows "
                             f"{rows[:10].tolist()}{' ...' if rows.size > 10 else ''}); remove or impute them")
    return jnp.asarray(inputs)


def _check_apply(apply_fn, params, inputs) -> int:
    """Evaluate ``apply_fn`` on one sample and return k; re-raise failures naming the cause."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable apply_fn(params, x), got {type(apply_fn).__name__}")
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    not_float = [jax.tree_util.keystr(path) or "params" for path, leaf in leaves
                 if not jnp.issubdtype(getattr(leaf, "dtype", None) or np.result_type(leaf), jnp.floating)]
    if not_float:
        raise ValueError(f"params: expected floating-point leaves (the Jacobian is taken with respect to them), got "
                         f"non-float dtype at {', '.join(not_float[:5])}{' ...' if len(not_float) > 5 else ''}; "
                         "cast them, e.g. jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), params)")
    try:
        out = apply_fn(params, inputs[:1])
    except Exception as err:  # any failure here is a params/apply_fn/input mismatch: say so
        raise ValueError(
            f"apply_fn(params, inputs[:1]) failed with {type(err).__name__}: {err}. Check that params were made "
            f"by the init_fn matching apply_fn and that inputs have the shape the model expects "
            f"(got inputs of shape {tuple(inputs.shape)})") from err
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 2 or shape[0] != 1:
        raise ValueError(
            f"apply_fn: expected outputs of shape (batch, k), got shape {shape} for a batch of 1 input. "
            "Wrap apply_fn so it returns (batch, k): e.g. out.reshape(len(x), -1) for 3-D/4-D outputs, "
            "out[:, None] for 1-D outputs")
    return shape[1]


def _resolve_batch_size(batch_size, n, k, d, num_devices, itemsize):
    """User batch size, or the largest one whose per-batch Jacobian (b·k·d) fits the memory budget;
    rounded up to a multiple of the device count (padding handles the rest)."""
    if batch_size is None:
        batch_size = max(1, min(n, _BATCH_MEMORY_BYTES // max(1, 3 * k * d * itemsize)))
    elif not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
    return int(-(-min(int(batch_size), n) // num_devices) * num_devices)


def _make_projection(apply_fn, params, *, coords_per_layer, seed, method) -> Projection:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if not isinstance(coords_per_layer, (int, np.integer)) or isinstance(coords_per_layer, bool) \
            or coords_per_layer < 1:
        raise ValueError(f"coords_per_layer: expected a positive int, got {coords_per_layer!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    path_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not path_leaves:
        raise ValueError("params: no parameter leaves (empty pytree); pass the model's parameters")
    names, dims, sizes, scales, indices, signs = [], [], [], [], [], []
    for leaf, (path, value) in enumerate(path_leaves):
        name = jax.tree_util.keystr(path) or "params"
        dtype = getattr(value, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(f"params leaf {name}: expected a floating-point array, got {type(value).__name__} "
                            f"of dtype {dtype}; keep only trainable float parameters in params")
        d = int(np.prod(np.shape(value)))
        m = min(int(coords_per_layer), d)
        names.append(name)
        dims.append(d)
        sizes.append(m)
        idx = sgn = None
        if m < d and method == "subsample":
            idx = jnp.sort(jax.random.choice(_leaf_key(seed, leaf), d, (m,), replace=False))
        elif m < d and method == "countsketch":
            idx, sgn = _bucket_table(_leaf_key(seed, leaf), d, m)
        indices.append(idx)
        signs.append(sgn)
        scales.append(math.sqrt(d / m) if idx is not None and method == "subsample" else 1.0)
    return Projection(apply_fn=apply_fn, params=params, method=method, coords_per_layer=int(coords_per_layer),
                      seed=int(seed), leaf_names=tuple(names), leaf_dims=tuple(dims), layer_sizes=tuple(sizes),
                      scales=tuple(scales), indices=tuple(indices), signs=tuple(signs))


def _bucket_table(key, d, m):
    """CountSketch buckets of d coordinates into m: a random permutation read row by row into a
    (⌈d/m⌉, m) table (column b = bucket b, sizes ⌈d/m⌉ or ⌊d/m⌋) and i.i.d. signs ±1 (0 on padding)."""
    perm_key, sign_key = jax.random.split(key)
    rows = -(-d // m)
    idx = jnp.pad(jax.random.permutation(perm_key, d), (0, rows * m - d)).reshape(rows, m)
    real = (jnp.arange(rows * m) < d).reshape(rows, m)
    return idx, jax.random.rademacher(sign_key, (rows, m)).astype(jnp.int8) * real


def projected_features(apply_fn: Callable, params, inputs, *, coords_per_layer: int = 2000, seed: int = 0,
                       batch_size: int | None = None, method: str = "countsketch", progress: bool = True) -> Features:
    """Projected per-layer Jacobian features Φ (n, k, p) with E[ΦΦᵀ] = K (empirical NTK), and f0 (n, k).

    Φ_i = [J_iℓ P_ℓ]_ℓ with J_iℓ the (k × d_ℓ) Jacobian of leaf ℓ at ``params`` and P_ℓ a random
    projection to m_ℓ = min(coords_per_layer, d_ℓ) coordinates: ``method="countsketch"`` (default)
    adds every coordinate with a random sign into one of m_ℓ buckets; ``"subsample"`` keeps m_ℓ
    coordinates without replacement, rescaled by sqrt(d_ℓ/m_ℓ) (SI paper §5); ``"gaussian"`` /
    ``"rademacher"`` use a dense sketch with entries of variance 1/m_ℓ. Leaves with
    d_ℓ <= coords_per_layer are kept whole, so ΦΦᵀ = K exactly when the budget covers every leaf.
    ``result.projection.features(X_val)`` reuses the same projection for new inputs.

    ``batch_size`` (None: chosen so one batch's Jacobian takes ≈ 256 MiB) bounds memory; the
    batch is sharded over ``jax.devices()``. ``apply_fn(params, x)`` must return (batch, k).

    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: x @ w["W"]
    >>> res = projected_features(apply_fn, {"W": jnp.ones((3, 2))}, jnp.eye(3), progress=False)
    >>> res.phi.shape, res.outputs.shape
    ((3, 2, 6), (3, 2))
    """
    inputs = _check_inputs(inputs, "inputs")
    _check_apply(apply_fn, params, inputs)
    projection = _make_projection(apply_fn, params, coords_per_layer=coords_per_layer, seed=seed, method=method)
    return projection.features(inputs, batch_size=batch_size, progress=progress)


def exact_ntk(apply_fn: Callable, params, x1, x2=None, batch_size: int | None = None, *,
              implementation: int | None = None, progress: bool = True) -> np.ndarray:
    """The exact empirical NTK K(x1, x2)_{ij,ab} = ⟨∂f_a(x1_i)/∂w, ∂f_b(x2_j)/∂w⟩, shape (n1, n2, k, k).

    The reference the projection is measured against. ``implementation=None`` (default): plain
    JAX Jacobian contraction, K = Σ_ℓ J1_ℓ J2_ℓᵀ over parameter leaves ℓ, with per-sample
    Jacobians J (b, k, d_ℓ) from ``vmap(jacrev)`` on blocks of ``batch_size`` rows of x1 and of x2
    (None: the largest block whose two Jacobians take ≈ 256 MiB). Memory ~ 2·b·k·d plus the
    kernel; cost ~ (n1/b)·n2·k·F for the Jacobians (F: one forward pass; a row block's Jacobian is
    reused along its row) + n1·n2·k²·d for the contractions; for x2 = None only the blocks on and
    above the diagonal are computed.

    ``implementation=1`` (JACOBIAN_CONTRACTION) or ``2`` (NTK_VECTOR_PRODUCTS) uses
    ``neural_tangents.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=...)``
    instead, block by block; it needs the ``nt`` extra (neural-tangents 0.6.5, jax 0.4.35;
    implementation 3 crashes there). 2 was measured 2x faster than 1 on the 1024-unit MLP, 1 six
    times faster than 2 on the SI paper CNN (experiments/bench_features.py).

    >>> import jax.numpy as jnp
    >>> K = exact_ntk(lambda w, x: x @ w, jnp.ones((2, 3)), jnp.eye(2), progress=False)
    >>> K.shape, float(K[0, 0, 0, 0]), float(K[0, 0, 0, 1]), float(K[0, 1, 0, 0])
    ((2, 2, 3, 3), 1.0, 0.0, 0.0)
    """
    x1 = _check_inputs(x1, "x1")
    k = _check_apply(apply_fn, params, x1)
    symmetric = x2 is None
    x2 = x1 if symmetric else _check_inputs(x2, "x2")
    if implementation is not None and implementation not in (1, 2):
        raise ValueError(f"implementation: expected None (plain JAX), 1 or 2 (neural-tangents "
                         f"JACOBIAN_CONTRACTION / NTK_VECTOR_PRODUCTS), got {implementation!r}")
    n1, n2 = x1.shape[0], x2.shape[0]
    if implementation is None:
        d = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params))
        itemsize = jnp.result_type(*jax.tree_util.tree_leaves(params)).itemsize
        bs = _resolve_batch_size(batch_size, max(n1, n2), 2 * k, d, 1, itemsize)
    else:
        bs = max(n1, n2) if batch_size is None else _resolve_batch_size(batch_size, max(n1, n2), 1, 1, 1, 1)
    blocks = [(i, j) for i in range(0, n1, bs) for j in range(0, n2, bs) if not (symmetric and j < i)]
    if progress and len(blocks) > 1:
        from tqdm.auto import tqdm

        blocks = tqdm(blocks, desc="exact NTK blocks", unit="block")
    if implementation is None:
        block_fn = _jax_ntk_blocks(apply_fn, params, bs)
    else:
        block_fn = _nt_ntk_blocks(apply_fn, params, implementation)
    kernel = None
    row = None
    for i, j in blocks:
        if row is None or row[0] != i:
            row = (i, x1[i:i + bs])
        block = block_fn(row[1], x2[j:j + bs], i == j and symmetric)
        if kernel is None:
            kernel = np.empty((n1, n2, k, k), block.dtype)
        kernel[i:i + bs, j:j + bs] = block
        if symmetric and j > i:
            kernel[j:j + bs, i:i + bs] = block.transpose(1, 0, 3, 2)
    return kernel


def _jax_ntk_blocks(apply_fn, params, bs):
    """block(xa, xb, same) = Σ_ℓ J_ℓ(xa) J_ℓ(xb)ᵀ, (len(xa), len(xb), k, k); rows padded to ``bs``
    (one compiled shape), the Jacobian of xb reused when ``same``."""

    def pad(x):
        rows = x.shape[0]
        return jnp.concatenate([x, jnp.broadcast_to(x[:1], (bs - rows, *x.shape[1:]))]) if rows < bs else x

    cached = {}  # the Jacobian of the current row block, reused along its row of blocks

    def block(xa, xb, same):
        if cached.get("xa") is not xa:
            cached.update(xa=xa, ja=_jacobian_leaves(params, pad(xa), apply_fn=apply_fn))
        ja = cached["ja"]
        jb = ja if same else _jacobian_leaves(params, pad(xb), apply_fn=apply_fn)
        return np.asarray(_contract_leaves(ja, jb))[: xa.shape[0], : xb.shape[0]]

    return block


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _jacobian_leaves(params, xb, *, apply_fn):
    """Per-sample Jacobians of one batch, one (b, k, d_ℓ) array per parameter leaf."""
    jac = jax.vmap(jax.jacrev(functools.partial(_single_output, apply_fn)), in_axes=(None, 0))(params, xb)
    return [leaf.reshape(*leaf.shape[:2], -1) for leaf in jax.tree_util.tree_leaves(jac)]


@jax.jit
def _contract_leaves(ja, jb):
    """Σ_ℓ einsum('iap,jbp->ijab', ja_ℓ, jb_ℓ)."""
    return sum(jnp.einsum("iap,jbp->ijab", a, b) for a, b in zip(ja, jb))


def _nt_ntk_blocks(apply_fn, params, implementation):
    """block(xa, xb, same) from neural-tangents' empirical NTK (the ``nt`` extra)."""
    try:
        import neural_tangents as nt  # imported here: neural-tangents pulls in TensorFlow
    except ImportError as err:
        raise ImportError(f"exact_ntk(implementation={implementation}) needs neural-tangents: install the nt extra "
                          "(pip install 'ntk_info[nt]', which pins jax 0.4.35), or pass implementation=None for "
                          "the plain-JAX kernel") from err
    ntk_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=implementation))
    return lambda xa, xb, same: np.asarray(ntk_fn(xa, None if same else xb, params))


def kernel_relative_error(phi, kernel) -> float:
    """||ΦΦᵀ - K||_F / ||K||_F for features ``phi`` (n, k, p) and a kernel (n, n, k, k) (or (n, p), (n, n))."""
    phi = np.asarray(phi)
    kernel = np.asarray(kernel)
    if phi.ndim == 2:
        phi = phi[:, None, :]
    if kernel.ndim == 2:
        kernel = kernel[:, :, None, None]
    n, k = phi.shape[:2]
    if kernel.shape != (n, n, k, k):
        raise ValueError(f"kernel: expected shape {(n, n, k, k)} to match phi of shape {phi.shape}, "
                         f"got {kernel.shape}")
    approx = np.einsum("iap,jbp->ijab", phi, phi)
    return float(np.linalg.norm(approx - kernel) / np.linalg.norm(kernel))


def ntk_lambda_max(apply_fn: Callable, params, inputs, *, iterations: int = 100, rtol: float = 1e-6,
                   seed: int = 0) -> float:
    """λ_max of the empirical NTK K = JJᵀ (N = n·k rows) of ``apply_fn`` at ``params`` on ``inputs``.

    Power iteration on the Gauss-Newton matrix JᵀJ (same non-zero spectrum as K), one jvp and one vjp
    per step, never forming J; stops when the estimate changes by less than ``rtol`` (relative) or
    after ``iterations`` steps. Full-batch GD on the sum loss is stable for lr < 2/(λ_max + λ)
    (``ntk_info.dynamics.max_stable_lr``). The estimate never exceeds the true λ_max (Rayleigh
    quotient); NaN when the Jacobian is not finite (e.g. inputs of magnitude 1e300), 0 when J = 0.
    """
    from jax.flatten_util import ravel_pytree

    inputs = _check_inputs(inputs, "inputs")
    _check_apply(apply_fn, params, inputs)
    flat, unravel = ravel_pytree(params)
    _, jvp = jax.linearize(lambda w: apply_fn(unravel(w), inputs), flat)
    vjp = jax.linear_transpose(jvp, flat)
    gauss_newton = jax.jit(lambda v: vjp(jvp(v))[0])
    v = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype)
    v = v / jnp.linalg.norm(v)
    estimate = 0.0
    for _ in range(iterations):
        w = gauss_newton(v)
        new = float(jnp.vdot(v, w))  # Rayleigh quotient vᵀ JᵀJ v with ||v|| = 1
        norm = float(jnp.linalg.norm(w))
        if not (math.isfinite(new) and math.isfinite(norm)):
            return float("nan")
        if norm == 0.0:  # J = 0: the model does not depend on its weights at these inputs
            return 0.0
        v = w / norm
        if abs(new - estimate) <= rtol * abs(new):
            return new
        estimate = new
    return estimate
