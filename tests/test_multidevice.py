"""The LOO's sample axis split over 8 (fake CPU) devices with shard_map equals the 1-device result.

Runs the 8-device half in a subprocess (XLA_FLAGS must be set before JAX starts): k = 1 and k = 2,
the rational solver, the secular downdate (root finder inside shard_map) and block Schur in both bases.
"""
import os
import subprocess
import sys

import numpy as np

_CASES = """
import numpy as np
from ntk_info import leave_one_out

def cases(data):
    K, Kv, r, F, Fv = data["K"], data["Kv"], data["r"], data["F"], data["Fv"]
    K1, Kv1, r1 = K[:, :, 0, 0], Kv[:, :, 0, 0], r[:, 0]
    kw = dict(progress=False, chunk_size=5)
    runs = {
        "rational_k2": leave_one_out(kernel=K, residuals=r, cross_kernel=Kv, lr=0.1, steps=np.array([3.0, 40.0]),
                                     weight_decay=np.array([0.0, 0.2]), solver="rational", **kw),
        "downdate_k2": leave_one_out(kernel=K, residuals=r, cross_kernel=Kv, lr=0.1, steps=40.0, solver="downdate",
                                     **kw),
        "rational_k1": leave_one_out(kernel=K1, residuals=r1, cross_kernel=Kv1, lr=0.1, steps=40.0,
                                     solver="rational", **kw),
        "downdate_k1": leave_one_out(kernel=K1, residuals=r1, cross_kernel=Kv1, lr=0.1, steps=40.0,
                                     solver="downdate", **kw),
        "schur_dual_k2": leave_one_out(kernel=K, residuals=r, cross_kernel=Kv, lr=0.1, steps=np.inf,
                                       weight_decay=0.3, **kw),
        "schur_primal_k2": leave_one_out(features=F, residuals=r, cross_features=Fv, lr=0.1, steps=np.inf,
                                         weight_decay=0.3, **kw),
        "primal_k2": leave_one_out(features=F, residuals=r, cross_features=Fv, lr=0.02, steps=25.0, discrete=True,
                                   **kw),
        "schur_dual_k1": leave_one_out(kernel=K1, residuals=r1, lr=0.1, steps=np.inf, weight_decay=0.3, **kw),
    }
    out = {}
    for name, res in runs.items():
        out[name + "/w"] = np.asarray(res.weight_change_sq)
        out[name + "/s"] = np.asarray(res.self_prediction_change)
        out[name + "/t"] = np.asarray(res.train_prediction_change_sq)
        if res.prediction_change_sq is not None:
            out[name + "/v"] = np.asarray(res.prediction_change_sq)
        out[name + "/solver"] = np.asarray(res.solver)
    return out
"""

_SCRIPT = """
import sys, numpy as np, jax
jax.config.update("jax_enable_x64", True)
assert jax.device_count() == 8, jax.device_count()
exec(sys.argv[3])
np.savez(sys.argv[2], **cases(np.load(sys.argv[1])))
"""


def _problem(tmp_path):
    rng = np.random.default_rng(7)
    n, k, p = 13, 2, 9
    F = rng.standard_normal((n, k, p))
    Fv = rng.standard_normal((4, k, p))
    J = F.reshape(n * k, p)
    K = (J @ J.T).reshape(n, k, n, k).transpose(0, 2, 1, 3)
    Kv = (Fv.reshape(4 * k, p) @ J.T).reshape(4, k, n, k).transpose(0, 2, 1, 3)
    r = rng.standard_normal((n, k))
    data = dict(K=K, Kv=Kv, r=r, F=F, Fv=Fv)
    np.savez(tmp_path / "in.npz", **data)
    return data


def test_eight_devices_equal_one(tmp_path):
    """Every solver (rational, downdate, dual/primal Schur), k = 1 and 2, on 8 devices = on 1 (n = 13, padded)."""
    data = _problem(tmp_path)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), _CASES],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = np.load(tmp_path / "out.npz")
    scope = {}
    exec(_CASES, scope)
    single = scope["cases"](data)
    assert set(single) == set(sharded.files)
    solvers = {name: str(single[name]) for name in single if name.endswith("/solver")}
    assert solvers == {"rational_k2/solver": "rational", "downdate_k2/solver": "downdate",
                       "rational_k1/solver": "rational", "downdate_k1/solver": "downdate",
                       "schur_dual_k2/solver": "schur", "schur_primal_k2/solver": "schur",
                       "primal_k2/solver": "rational", "schur_dual_k1/solver": "schur"}
    for name, ours in single.items():
        if name.endswith("/solver"):
            assert str(sharded[name]) == str(ours)
            continue
        theirs = sharded[name]
        assert ours.shape == theirs.shape, name
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14 * np.abs(theirs).max(), err_msg=name)
