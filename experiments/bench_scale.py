"""Benchmark: end-to-end features → LOO → scores → CSV at dataset scale, and fast iterative rescoring.

Scale (default): MNIST-shaped synthetic inputs (28×28×1, 10 classes: class templates plus noise),
the SI paper's MLP (one hidden layer of 1024, NTK parameterization) or CNN, projected features
(``--projection``, default the SI paper's subsampling, whose Dense kernels come from the zoo's
factored per-sample Jacobian; ``--coords-per-layer`` per leaf) streamed in batches through the primal LOO
(``ntk_info.streaming``: pass 1 accumulates ΦᵀΦ, pass 2 recomputes each batch's features for the
per-sample LOO; the full n·k × n·k kernel, rank-10 removal per sample; float32 network and
features, float64 Gram and LOO; 1000 GD steps at lr = 1/λ_max; F-SI on ``--n-val`` inputs). Each n runs in a fresh
subprocess; per stage it records wall seconds and the peak resident memory (RSS sampled every
20 ms), then prints a table and each stage's growth n → n' against linear growth.

    python experiments/bench_scale.py --sizes 5000,10000,20000,50000 [--model cnn] [--coords-per-layer 1000]

Iterative summarization (``--iterative``): the demo's setting (digits, 1000 samples, 10 classes,
MLP-256, 2000 coordinates per leaf, trace kernel, 1000 GD steps, F-SI, 19 removals of 5 %): the
old rescoring (slice the kept kernel, ``leave_one_out`` from scratch at every step) against
``ntk_info.apps.summarize.SubsetRescorer`` (one numpy eigh per step, the filter fitted once, nothing
compiled), side by side: wall and CPU seconds with their ratio, seconds per step, whether the
removal masks agree, and the largest per-score relative difference.

    python experiments/bench_scale.py --iterative
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class StageMeter:
    """Wall seconds and peak RSS (GB) per named stage; RSS read from /proc/self/statm every 20 ms."""

    def __init__(self):
        self.records, self._peak, self._stop, self._cpu = {}, 0, False, time.process_time()
        self._page = os.sysconf("SC_PAGE_SIZE")
        threading.Thread(target=self._sample, daemon=True).start()

    def _rss(self):
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _sample(self):
        while not self._stop:
            self._peak = max(self._peak, self._rss())
            time.sleep(0.02)

    def stage(self, name, seconds=None, cpu_seconds=None, start=None):
        """Close a stage: wall and CPU seconds (given, or since ``start`` / the last stage) and the peak RSS
        seen since the last stage."""
        peak = max(self._peak, self._rss())
        cpu = time.process_time()
        self.records[name] = {"seconds": seconds if seconds is not None else time.perf_counter() - start,
                              "cpu_seconds": cpu_seconds if cpu_seconds is not None else cpu - self._cpu,
                              "peak_rss_gb": peak / 2**30}
        self._cpu = cpu
        self._peak = self._rss()


def run_one(n, model_name, coords, n_val, batch_size, out_dir, method):
    """One end-to-end run at size n (in this process); returns the stage records."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from ntk_info.features import projected_features
    from ntk_info.models import get_model, init_params
    from ntk_info.streaming import streamed_leave_one_out

    meter = StageMeter()
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 1, (10, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, n + n_val)
    X_all = np.clip(templates[labels] + 0.5 * rng.standard_normal((n + n_val, 28, 28, 1)), 0, 1).astype(np.float32)
    X, X_val, Y = X_all[:n], X_all[n:], np.eye(10)[labels[:n]]
    model = get_model(model_name, 10)
    # float32 network and features (the Jacobian of a batch is the memory peak); the engine is float64
    params = jax.tree_util.tree_map(lambda w: w.astype(np.float32), init_params(model, (28, 28, 1), seed=0))
    projection = projected_features(model.apply_fn, params, X[:2], coords_per_layer=coords, seed=0, method=method,
                                    progress=False).projection
    meter.stage("data + model", start=t0)
    # lr = 0.5/λmax, λmax of the kernel estimated on ≤ 500 samples by power iteration and scaled to n
    # (the top eigenvalue grows about linearly in n); a setting of the benchmark, not of the method
    n_sub = min(n, 500)
    sub = np.asarray(projection.features(X[:n_sub], progress=False).phi, np.float64).reshape(-1, projection.p)
    v = np.random.default_rng(1).standard_normal(projection.p)
    for _ in range(50):
        v = sub.T @ (sub @ v)
        lam, v = np.linalg.norm(v), v / np.linalg.norm(v)
    lr = 0.5 / (lam * n / n_sub)
    meter.stage("lr estimate", start=t0 + meter.records["data + model"]["seconds"])
    result = streamed_leave_one_out(projection, X, Y, X_val, lr=lr, steps=1000.0, discrete=True,
                                    batch_size=batch_size, progress=False,
                                    on_stage=lambda name, seconds, cpu: meter.stage(name, seconds, cpu))
    t1 = time.perf_counter()
    si = 0.5 * result.weight_change_sq
    fsi = result.prediction_change_sq / (2.0 * result.n_val)
    loo_res = np.linalg.norm(result.fitted_residuals + result.self_prediction_change, axis=1)
    np.savetxt(os.path.join(out_dir, f"scores_{model_name}_{n}.csv"), np.column_stack([np.arange(n), si, fsi, loo_res]),
               delimiter=",", header="index,si,fsi,loo_residual", comments="", fmt=["%d", "%.10g", "%.10g", "%.10g"])
    meter.stage("scores + CSV", start=t1)
    meter.records["total"] = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time(),
                              "peak_rss_gb": max(r["peak_rss_gb"] for r in meter.records.values())}
    meter.records["info"] = {"p": result.p, "rank": result.rank, "solver": result.solver, "n_val": result.n_val,
                             "projection": method, "factored": projection.factored}
    return meter.records


def scale(args):
    sizes = [int(v) for v in args.sizes.split(",")]
    table = {}
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--model", args.model, "--coords-per-layer",
               str(args.coords_per_layer), "--n-val", str(args.n_val), "--batch-size", str(args.batch_size),
               "--projection", args.projection, "--out", args.out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"n = {n}: failed\n{proc.stderr[-2000:]}")
            break
        table[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        info = table[n].pop("info")
        print(f"n = {n}: {json.dumps(table[n])}  ({info})", flush=True)
    stages = [s for s in next(iter(table.values()))]
    print(f"\n{args.model}, {args.projection}, {args.coords_per_layer} coords/leaf, n_val = {args.n_val}: "
          "wall s / CPU s (peak RSS GB)")
    print(f"{'stage':<16}" + "".join(f"{'n=' + str(n):>26}" for n in table))
    for stage in stages:
        print(f"{stage:<16}" + "".join(f"{table[n][stage]['seconds']:>9.1f} /{table[n][stage]['cpu_seconds']:>7.1f} "
                                       f"({table[n][stage]['peak_rss_gb']:5.2f})" for n in table))
    ns = list(table)
    for a, b in zip(ns, ns[1:]):
        growth = "  ".join(f"{s} x{table[b][s]['cpu_seconds'] / max(table[a][s]['cpu_seconds'], 1e-9):.2f}"
                           for s in stages if s in ("gram pass", "eigh", "loo pass", "total"))
        print(f"n {a} -> {b} (x{b / a:.1f}), CPU seconds: {growth}")


def iterative(args):
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    import ntk_info
    from ntk_info import data as data_mod
    from ntk_info.apps.summarize import SubsetRescorer, iterative_keep_masks
    from ntk_info.models import get_model, init_params
    from ntk_info.training import targets

    ds = data_mod.load_dataset("digits", n_train=1000, val_fraction=0.3, seed=0)
    labels, _, _ = data_mod.add_label_noise(ds.y, 0.1, ds.num_classes, seed=0)
    Y = targets(labels, ds.num_classes)
    model = get_model("mlp", ds.num_classes, width=256)
    params = init_params(model, ds.X.shape[1:], seed=0)
    feats = ntk_info.projected_features(model.apply_fn, params, ds.X, coords_per_layer=2000, seed=0, progress=False)
    val = feats.projection.features(ds.X_val[::2], progress=False)
    n, k = feats.outputs.shape
    phi = np.asarray(feats.phi).reshape(n, -1)
    kernel = phi @ phi.T / k  # the CLI's trace kernel
    cross = np.asarray(val.phi).reshape(val.phi.shape[0], -1) @ phi.T / k
    residuals = Y - np.asarray(feats.outputs)
    lr, steps = 1.0 / np.linalg.eigvalsh(kernel)[-1], 1000
    fractions = [0.1, 0.3, 0.5, 0.7, 0.9]
    if args.blas_threads:  # e.g. 1 on a busy machine, where waiting BLAS threads spin for their time slice
        threadpool_limits(args.blas_threads)
    blas = ", ".join(f"{lib['internal_api']} {lib['num_threads']} threads" for lib in threadpool_info())
    print(f"n = {n}, k = {k} (trace kernel), m = {cross.shape[0]} validation inputs, lr = 1/λmax, {steps} GD steps; "
          f"BLAS: {blas}; load average before: {os.getloadavg()[0]:.1f}", flush=True)

    def from_scratch(kept):  # the CLI's subset_scorer before: slice, leave_one_out, F-SI
        loo = ntk_info.leave_one_out(kernel[np.ix_(kept, kept)], residuals=residuals[kept], lr=lr, steps=steps,
                                     discrete=True, cross_kernel=cross[:, kept], progress=False)
        return np.asarray(loo.prediction_change_sq) / (2.0 * loo.n_val)

    timings, masks, calls = {}, {}, {}
    for name, make in (("rescorer", lambda: SubsetRescorer(kernel, residuals, cross, lr=lr, steps=steps, discrete=True,
                                                          by="fsi")),
                       ("from scratch", lambda: from_scratch)):
        t0, c0 = time.perf_counter(), time.process_time()
        score_fn = make()
        setup = time.perf_counter() - t0
        seen, per_step = [], []

        def counted(kept, score_fn=score_fn, seen=seen, per_step=per_step):
            start = time.perf_counter()
            seen.append(np.asarray(score_fn(kept)))
            per_step.append((kept.size, time.perf_counter() - start))
            return seen[-1]

        masks[name] = iterative_keep_masks(counted, n, fractions, progress=False)
        timings[name] = (time.perf_counter() - t0, time.process_time() - c0)
        calls[name] = seen
        print(f"{name:>13}: {len(seen)} rescoring steps in {timings[name][0]:.1f} s wall "
              f"(set-up {setup:.1f} s, steps {sum(t for _, t in per_step):.1f} s), {timings[name][1]:.1f} CPU-s; "
              "per step (kept: s): " + ", ".join(f"{size}: {t:.2f}" for size, t in per_step), flush=True)
    diff = max(np.max(np.abs(a - b) / np.abs(b)) for a, b in zip(calls["rescorer"], calls["from scratch"]))
    print(f"\n{'':>13} {'wall s':>8} {'CPU s':>8}")
    for name in timings:
        print(f"{name:>13} {timings[name][0]:8.1f} {timings[name][1]:8.1f}")
    print(f"{'ratio':>13} {timings['from scratch'][0] / timings['rescorer'][0]:8.1f}x "
          f"{timings['from scratch'][1] / timings['rescorer'][1]:7.1f}x")
    print(f"new path (SubsetRescorer), all {len(calls['rescorer'])} steps of the demo, set-up included: "
          f"{timings['rescorer'][0]:.1f} s wall; same masks: {np.array_equal(masks['rescorer'], masks['from scratch'])}; "
          f"largest per-score relative difference {diff:.1e}; load average after: {os.getloadavg()[0]:.1f} "
          f"(on {os.cpu_count()} cores: above that, other processes share them and wall seconds inflate)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,10000,20000,50000")
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    parser.add_argument("--coords-per-layer", type=int, default=1000)
    parser.add_argument("--projection", default="subsample", choices=("subsample", "countsketch"))
    parser.add_argument("--n-val", type=int, default=200, help="validation inputs for F-SI (default: 200)")
    parser.add_argument("--batch-size", type=int, default=512, help="samples per feature batch (default: 512)")
    parser.add_argument("--out", default="/tmp/bench_scale")
    parser.add_argument("--iterative", action="store_true")
    parser.add_argument("--blas-threads", type=int, help="--iterative: limit the BLAS/OpenMP threads (default: as set up)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.one:
        print(json.dumps(run_one(args.one, args.model, args.coords_per_layer, args.n_val, args.batch_size, args.out,
                                 args.projection)))
    elif args.iterative:
        iterative(args)
    else:
        scale(args)


if __name__ == "__main__":
    main()
