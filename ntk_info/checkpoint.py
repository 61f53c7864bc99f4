"""Load and save a model's parameters, to linearize around trained or pretrained weights.

Formats, chosen from the path:

- ``*.npz``: one array per parameter leaf, keyed by its path as ``jax.tree_util.keystr`` writes it
  (``"['params']['Dense_0']['kernel']"``, ``"[1][0]"``; a bare array is ``"params"``). Needs only
  numpy; what ``save_params`` writes by default.
- ``*.msgpack``: ``flax.serialization.to_bytes(params)``, Flax's own single-file format (needs flax).
- a directory: an Orbax checkpoint, ``orbax.checkpoint.StandardCheckpointer().save(path, params)``
  (what the Flax documentation recommends; needs orbax-checkpoint, which comes with flax).

``load_params(path, like=params)`` returns a pytree with the structure of ``like`` (e.g. freshly
initialized parameters of the same model, or ``jax.eval_shape`` of them) filled from the file,
each leaf cast to ``like``'s dtype; a leaf missing from the file, an entry the structure does not
have, a shape or a kind (float / int) that differs raises a ValueError naming the leaf. Leaves are
matched by their key path with list indices and attribute names compared as strings, so that a
Flax NNX state saved with Orbax (``checkpointer.save(path, nnx.state(model))``, Flax's recipe)
loads with ``like=nnx.state(model)``, then ``nnx.update(model, loaded)`` and ``from_flax(model)``.
"""
from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np

__all__ = ["load_params", "save_params", "CHECKPOINT_FORMATS"]

CHECKPOINT_FORMATS = ("npz", "msgpack", "orbax")


def _format(path, format):
    if format is not None:
        if format not in CHECKPOINT_FORMATS:
            raise ValueError(f"format: expected None (from the path) or one of {CHECKPOINT_FORMATS}, got {format!r}")
        return format
    path = os.fspath(path)
    if path.endswith(".npz"):
        return "npz"
    if path.endswith((".msgpack", ".mpk")):
        return "msgpack"
    if os.path.isdir(path) or not os.path.splitext(path)[1]:
        return "orbax"
    raise ValueError(f"path {path!r}: cannot tell the checkpoint format; use a .npz or .msgpack file or an Orbax "
                     "checkpoint directory, or pass format=")


def _named_leaves(tree) -> dict[str, Any]:
    """{keystr(path): leaf} of a pytree (None sub-trees have no leaves); a bare leaf is named 'params'."""
    return {jax.tree_util.keystr(path) or "params": leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


_KEY = re.compile(r"\['((?:[^'\\]|\\.)*)'\]|\[(-?\d+)\]|\.(\w+)")


def _canonical(name: str) -> tuple[str, ...]:
    """A keystr name as a tuple of strings: ``['layers'][0].value`` and ``['layers']['0']['value']`` (how
    Orbax and Flax's state dicts store list indices and NNX variables) are both ('layers', '0', 'value')."""
    if name == "params":
        return ()
    parts, end = [], 0
    for match in _KEY.finditer(name):
        if match.start() != end:
            return (name,)
        parts.append(next(group for group in match.groups() if group is not None))
        end = match.end()
    return tuple(parts) if end == len(name) else (name,)


def save_params(path, params, *, format: str | None = None) -> None:
    """Write ``params`` (any pytree of arrays) to ``path`` as .npz, .msgpack or an Orbax directory (see module doc).

    >>> import os, tempfile, numpy as np
    >>> params = {"body": [np.ones((2, 3)), None], "head": np.zeros(3)}
    >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
    >>> save_params(path, params)
    >>> sorted(np.load(path).files)
    ["['body'][0]", "['head']"]
    >>> restored = load_params(path, like=params)
    >>> restored["body"][1] is None, restored["head"].shape
    (True, (3,))
    """
    kind = _format(path, format)
    path = os.fspath(path)
    if kind == "npz":
        with open(path, "wb") as handle:  # a file object: np.savez would append .npz to other names
            np.savez(handle, **{name: np.asarray(leaf) for name, leaf in _named_leaves(params).items()})
    elif kind == "msgpack":
        from flax import serialization

        with open(path, "wb") as handle:
            handle.write(serialization.to_bytes(params))
    else:
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.abspath(path), params)
        checkpointer.wait_until_finished()


def load_params(path, like=None, *, format: str | None = None):
    """Parameters from ``path`` (.npz, .msgpack or an Orbax directory) in the structure of ``like``.

    ``like``: a pytree with the structure, shapes and dtypes expected (the model's initial params,
    or ``jax.eval_shape`` of them); leaves are matched by their path (``keystr``), cast to
    ``like``'s dtype, and every mismatch raises a ValueError naming the leaf. ``like=None``
    returns the file's own tree: {name: array} for .npz, Flax's state dict for .msgpack, the
    restored tree for Orbax. Example: see :func:`save_params`.
    """
    kind = _format(path, format)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path {path!r}: no such checkpoint file or directory")
    if kind == "npz":
        with np.load(path, allow_pickle=False) as data:
            stored = {name: data[name] for name in data.files}
        return stored if like is None else _fill(like, stored, path)
    if kind == "msgpack":
        from flax import serialization

        with open(path, "rb") as handle:
            state = serialization.msgpack_restore(handle.read())
        if like is None:
            return state
        like_state = serialization.to_state_dict(like)
        filled = _fill(like_state, _named_leaves(state), path)
        return serialization.from_state_dict(like, filled)
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    return restored if like is None else _fill(like, _named_leaves(restored), path)


def _fill(like, stored: dict, path):
    """``like``'s structure with each leaf taken from ``stored`` by name, checked and cast to like's dtype."""
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [jax.tree_util.keystr(p) or "params" for p, _ in path_leaves]
    by_key = {}
    for name, value in stored.items():
        by_key.setdefault(_canonical(name), []).append((name, value))
    ambiguous = [entries for entries in by_key.values() if len(entries) > 1]
    if ambiguous:
        raise ValueError(f"checkpoint {path!r}: entries {', '.join(n for n, _ in ambiguous[0])} name the same leaf")
    stored_by_key = {key: entries[0][1] for key, entries in by_key.items()}
    wanted = {_canonical(name) for name in names}
    missing = [name for name in names if _canonical(name) not in stored_by_key]
    extra = sorted(entries[0][0] for key, entries in by_key.items() if key not in wanted)
    if missing or extra:
        lines = [f"checkpoint {path!r} does not match the structure of like:"]
        if missing:
            lines.append(f"parameter leaf {missing[0]} is not in the file"
                         + (f" (nor {len(missing) - 1} more: {_first(missing[1:], 3)})" if len(missing) > 1 else ""))
        if extra:
            lines.append(f"the file has {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} like does not: "
                         f"{_first(extra, 4)}")
        lines.append(f"the file has: {_first(sorted(stored), 6)}. Pass as like the parameters of the model the "
                     "checkpoint was saved from (same structure and names)")
        raise ValueError("; ".join(lines))
    leaves = []
    for name, (_, ref) in zip(names, path_leaves):
        value = np.asarray(stored_by_key[_canonical(name)])
        shape = tuple(getattr(ref, "shape", np.shape(ref)))
        dtype = np.dtype(getattr(ref, "dtype", np.asarray(ref).dtype))
        if value.shape != shape:
            raise ValueError(f"checkpoint {path!r}: parameter leaf {name} has shape {value.shape} in the file, like "
                             f"expects {shape}; the checkpoint is of another architecture or size")
        if _kind(value.dtype) != _kind(dtype):
            raise ValueError(f"checkpoint {path!r}: parameter leaf {name} has dtype {value.dtype} in the file, like "
                             f"expects {dtype}")
        leaves.append(jax.numpy.asarray(value, dtype))
    return treedef.unflatten(leaves)


def _first(names, count) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def _kind(dtype) -> str:
    dtype = np.dtype(dtype)
    return "float" if np.issubdtype(dtype, np.inexact) else "bool" if dtype == bool else "int"
