"""Eigen-decomposition of a low-rank downdate diag(s) - Z Zᵀ, applied without forming eigenvectors.

API (stable; the LOO engine is written against it):
    dd = downdate(s, Z)            s: (r,) eigenvalues, Z: (r, k)
    dd.roots                       (r,) eigenvalues μ of diag(s) - Z Zᵀ
    apply(dd, fvals, x)            Q diag(fvals) Qᵀ x, fvals (r,) = f(dd.roots), x (r,) or (r, q)
Both functions are pure, jit- and vmap-compatible.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

__all__ = ["downdate", "downdate_dense", "apply"]


class DenseDowndate(NamedTuple):
    """Reference: explicit eigenvectors from a dense eigh of diag(s) - Z Zᵀ (O(r³))."""

    roots: jnp.ndarray
    vectors: jnp.ndarray


def downdate_dense(s, Z) -> DenseDowndate:
    """Eigenpairs of diag(s) - Z Zᵀ by recomputing the eigendecomposition (brute-force reference)."""
    mu, q = jnp.linalg.eigh(jnp.diag(s) - Z @ Z.T)
    return DenseDowndate(mu, q)


def apply(dd, fvals, x):
    """Q diag(fvals) Qᵀ x for the downdated eigenbasis Q."""
    return dd.vectors @ (fvals[:, None] * (dd.vectors.T @ x)) if x.ndim == 2 else dd.vectors @ (fvals * (dd.vectors.T @ x))


downdate = downdate_dense  # replaced by the secular-equation solver
