"""Float32 against float64 in the LOO engine, on the kernels of issue 8 §2.1 (x64 flag left OFF).

Run as a user who never heard of jax_enable_x64 would: the global flag stays at its default (off).
For each case the engine's default call, and (where the engine offers it) the explicit float32 opt-in
``dtype="float32"``, are compared with a float64 reference: the same engine inside
``jax.enable_x64(True)`` (itself checked against brute-force retraining by tests/test_loo.py) and, for
n = 300, brute-force retraining in numpy float64 (tests/reference.py: drop the sample, recompute).
Prints: kept rank, dropped directions and max|est - ref| / max|ref| of weight_change_sq.

    .venv/bin/python experiments/precision_float32.py
"""
import inspect
import os
import sys

import jax
import numpy as np

from ntk_info import leave_one_out

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from reference import loo_kernel  # noqa: E402  (numpy only)

try:
    from jax import enable_x64
except ImportError:  # jax 0.4.35
    from jax.experimental import enable_x64


def kernel(n, decades, seed=0):
    """K = Q diag(s) Qᵀ, s log-spaced over ``decades`` (λmax = 1), residuals N(0, 1)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    s = np.logspace(0, -decades, n)
    return (Q * s) @ Q.T, rng.normal(size=n)


CASES = [  # (label, n, decades, steps, discrete, lr = 1/λmax unless η·t·λmax given)
    ("n=1000, 5 decades, GD t=3000, lr=1/λmax", 1000, 5, 3000, True),
    ("n=1000, 5 decades, flow t=3000, lr=1/λmax", 1000, 5, 3000, False),
    ("n=300, 5 decades, GD t=3000, lr=1/λmax", 300, 5, 3000, True),
    ("n=300, 5 decades, flow η·t·λmax=1e4", 300, 5, 10000, False),
]


def main():
    print(f"jax {jax.__version__}, jax_enable_x64 = {jax.config.jax_enable_x64}")
    opt_in = "dtype" in inspect.signature(leave_one_out).parameters
    for label, n, decades, steps, discrete in CASES:
        K, r = kernel(n, decades)
        kw = dict(kernel=K, residuals=r, lr=1.0, steps=steps, discrete=discrete, progress=False)
        with enable_x64(True):
            ref = leave_one_out(**kw)
            want = np.asarray(ref.weight_change_sq, np.float64)
        brute = None
        if n <= 300:
            brute = loo_kernel(K, r, lr=1.0, steps=steps, discrete=discrete)["weight"]
            print(f"{label:45s} x64-on engine vs numpy brute force: "
                  f"{np.max(np.abs(want - brute)) / np.max(np.abs(brute)):.2e}")
        runs = [("default", leave_one_out(**kw))]
        if opt_in:
            runs.append(("dtype=float32", leave_one_out(dtype="float32", **kw)))
        for name, got in runs:
            est = np.asarray(got.weight_change_sq)
            err = np.max(np.abs(est.astype(np.float64) - want)) / np.max(np.abs(want))
            line = (f"{label:45s} {name:14s} dtype {str(est.dtype):8s} rank {got.rank:4d}/{ref.rank} "
                    f"(dropped {ref.rank - got.rank:3d})  max err / max = {err:.2e}")
            if brute is not None:
                line += f"  (vs brute force {np.max(np.abs(est - brute)) / np.max(np.abs(brute)):.2e})"
            print(line)


if __name__ == "__main__":
    main()
