"""Benchmark: projected features Φ (K ≈ ΦΦᵀ) against the exact empirical NTK.

For the MLP (1 hidden layer, 1024 ReLU units) and the SI paper's CNN of ``ntk_info.models``,
on n sklearn digits (8×8, upsampled to 28×28×1 with ``jax.image.resize``, linear; both models see
28×28 inputs as in the paper's MNIST setting), one output, float32, CPU. Printed side by side:

- wall time and peak memory of ``ntk_info.exact_ntk`` (plain-JAX Jacobian contraction, its default)
  for the full n × n kernel; with ``--check-implementations`` (in the ``nt`` extra's environment,
  ``.venv-nt``) neural-tangents' implementations 1 (JACOBIAN_CONTRACTION) and 2
  (NTK_VECTOR_PRODUCTS) are timed too, each stopped at 1.2× the default's time + 15 s;
- the same for ``ntk_info.projected_features`` at coords_per_layer = 500, 1000, 2000, 4000, for the
  default CountSketch and the SI paper's coordinate subsampling, with the relative Frobenius error
  ||ΦΦᵀ - K||_F / ||K||_F against that exact kernel.

Every measurement runs in its own subprocess; times are for the first call, compilation included
(both methods compile once per input shape). Peak memory is the child's maximum resident set size,
read with ``os.wait4`` (the per-child form of ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``;
tracemalloc would not see XLA's allocations); "baseline" is a child that imports everything and
builds model and data but computes nothing, and "extra" is peak minus baseline.

Errors are for one projection seed (0); across seeds they scatter by about ±25 % at n = 150.

Usage: ``python experiments/bench_features.py [--quick] [--n N] [--models mlp,cnn]
[--check-implementations]`` (``--quick``: n = 200).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BUDGETS = (500, 1000, 2000, 4000)


def _data_and_model(model_name: str, n: int):
    import jax
    import jax.numpy as jnp
    from sklearn.datasets import load_digits

    from ntk_info.models import get_model, init_params

    images = load_digits().images[:n, :, :, None] / 16.0
    X = jax.image.resize(jnp.asarray(images, jnp.float32), (n, 28, 28, 1), "linear")
    model = get_model(model_name, 1)
    return model, init_params(model, (28, 28, 1), seed=0), X


def _worker(model_name: str, task: str, n: int, out_path: str) -> None:
    """One measurement in a fresh process: 'baseline', 'exact:IMPL' or 'phi:METHOD:BUDGET'; saves the array."""
    import numpy as np

    from ntk_info.features import exact_ntk, projected_features

    model, params, X = _data_and_model(model_name, n)
    kind, _, arg = task.partition(":")
    start = time.perf_counter()
    if kind == "baseline":
        result = np.zeros(())
    elif kind == "exact":
        implementation = None if arg == "jax" else int(arg)
        result = exact_ntk(model.apply_fn, params, X, implementation=implementation, progress=False)[:, :, 0, 0]
    else:
        method, _, budget = arg.partition(":")
        result = projected_features(model.apply_fn, params, X, coords_per_layer=int(budget), method=method,
                                    progress=False).phi[:, 0]
    seconds = time.perf_counter() - start
    np.save(out_path, result)
    print(json.dumps({"seconds": seconds, "arg": arg}))


def _measure(model_name: str, task: str, n: int, out_path: str, timeout: float | None = None) -> dict:
    """Run one worker subprocess; its wall time and peak RSS (MiB) from os.wait4, or {"error": why}."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", model_name, task, str(n), out_path],
                                stdout=stdout, stderr=stderr, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - start > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                return {"error": f"stopped after {timeout:.0f} s"}
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        text, errors = stdout.read(), stderr.read().strip().splitlines()
    if proc.returncode != 0:
        return {"error": f"failed (exit {proc.returncode}): {errors[-1][:200] if errors else ''}"}
    return {**json.loads(text.strip().splitlines()[-1]), "peak_mib": usage.ru_maxrss / 1024}  # ru_maxrss: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 200 inputs instead of 1000")
    parser.add_argument("--n", type=int, default=None, help="number of inputs (default 1000, --quick 200)")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--check-implementations", action="store_true",
                        help="also time neural-tangents' implementations 1 and 2 (the nt extra; adds minutes)")
    args = parser.parse_args()
    n = args.n or (200 if args.quick else 1000)

    import numpy as np

    print(f"bench_features: n = {n} digits at 28x28x1, float32, CPU; times include compilation; "
          "memory = peak RSS of a subprocess per measurement")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models.split(","):
            path = lambda name: os.path.join(tmp, f"{model_name}_{name}.npy")  # noqa: E731
            base = _measure(model_name, "baseline", n, path("baseline"))
            exact = _measure(model_name, "exact:jax", n, path("exact"))
            if "error" in exact:
                raise RuntimeError(f"exact NTK ({model_name}): {exact['error']}")
            kernel = np.load(path("exact")).astype(np.float64)
            line = f"\n{model_name}: exact NTK by plain-JAX Jacobian contraction (exact_ntk's default)"
            if args.check_implementations:  # neural-tangents, stopped once clearly slower than the default
                for impl in (1, 2):
                    check = _measure(model_name, f"exact:{impl}", n, path("check"),
                                     timeout=1.2 * exact["seconds"] + 15)
                    line += f"; neural-tangents implementation {impl}: " + (
                        check["error"] if "error" in check else f"{check['seconds']:.1f} s")
            print(line)
            print(f"{'method':<28}{'time [s]':>10}{'peak [MiB]':>12}{'extra [MiB]':>13}{'rel. error':>12}"
                  f"{'speed-up':>10}")
            print(f"{'baseline (no compute)':<28}{'':>10}{base['peak_mib']:>12.0f}{'':>13}{'':>12}{'':>10}")
            print(f"{'exact NTK (plain JAX)':<28}{exact['seconds']:>10.1f}{exact['peak_mib']:>12.0f}"
                  f"{exact['peak_mib'] - base['peak_mib']:>13.0f}{0.0:>12.4f}{1.0:>10.2f}")
            for method in ("countsketch", "subsample"):
                for budget in BUDGETS:
                    res = _measure(model_name, f"phi:{method}:{budget}", n, path(f"phi{budget}"))
                    if "error" in res:
                        raise RuntimeError(f"projected features ({model_name}, {method}, {budget}): {res['error']}")
                    phi = np.load(path(f"phi{budget}")).astype(np.float64)
                    err = np.linalg.norm(phi @ phi.T - kernel) / np.linalg.norm(kernel)
                    print(f"{f'{method}, {budget}/leaf (p={phi.shape[1]})':<28}{res['seconds']:>10.1f}"
                          f"{res['peak_mib']:>12.0f}{res['peak_mib'] - base['peak_mib']:>13.0f}{err:>12.4f}"
                          f"{exact['seconds'] / res['seconds']:>10.2f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
