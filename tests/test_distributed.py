"""Two local CPU processes (jax.distributed, localhost coordinator) give the single-process streamed LOO."""
import os
import socket
import subprocess
import sys

import numpy as np

from ntk_info.features import projected_features
from ntk_info.models import init_params, mlp
from ntk_info.streaming import streamed_leave_one_out

_SCRIPT = """
import sys
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=120)
import numpy as np
from ntk_info.distributed import distributed_leave_one_out, process_shard
from ntk_info.features import projected_features
from ntk_info.models import init_params, mlp
exec(open(path + "/problem.py").read())
X, X_val, Y, projection = problem()
shard = process_shard(len(X))
res = distributed_leave_one_out(projection, X[shard], Y[shard], X_val, lr=0.05, steps=30.0, discrete=True,
                                batch_size=8, progress=False)
if jax.process_index() == 0:
    np.savez(path + "/out.npz", w=res.weight_change_sq, v=res.prediction_change_sq, s=res.self_prediction_change,
             f=res.fitted_residuals, o=res.outputs, rank=res.rank, n_local=shard.stop - shard.start)
jax.distributed.shutdown()
"""

_PROBLEM = """
def problem():
    rng = np.random.default_rng(3)
    model = mlp(num_outputs=3, width=16)
    params = init_params(model, (6,), seed=1)
    X = rng.standard_normal((29, 6))
    X_val = rng.standard_normal((5, 6))
    Y = rng.standard_normal((29, 3))
    projection = projected_features(model.apply_fn, params, X[:1], coords_per_layer=20, seed=2,
                                    progress=False).projection
    return X, X_val, Y, projection
"""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    (tmp_path / "problem.py").write_text(_PROBLEM)
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", _SCRIPT, str(port), str(pid), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
    try:
        outs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert 0 < int(got["n_local"]) < 29  # samples really were split

    scope = {"np": np, "mlp": mlp, "init_params": init_params, "projected_features": projected_features}
    exec(_PROBLEM, scope)
    X, X_val, Y, projection = scope["problem"]()
    ref = streamed_leave_one_out(projection, X, Y, X_val, lr=0.05, steps=30.0, discrete=True, batch_size=8,
                                 progress=False)
    assert int(got["rank"]) == ref.rank
    for key, theirs in [("w", ref.weight_change_sq), ("v", ref.prediction_change_sq), ("s", ref.self_prediction_change),
                        ("f", ref.fitted_residuals), ("o", ref.outputs)]:
        assert got[key].shape == theirs.shape, key
        np.testing.assert_allclose(got[key], theirs, rtol=1e-9, atol=1e-12 * np.abs(theirs).max(), err_msg=key)
