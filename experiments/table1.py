"""SI paper Table 1 on digits 4 vs 9: linearization, influence functions and MPE against retraining.

Data: all 4s and 9s of ``sklearn.datasets.load_digits`` (361 images, 8×8, scaled to [0, 1]), targets
±1 (9 -> +1), one fixed random split (seed 0) into a training and a validation half. Networks
(SI paper App. A.3): the MLP (1 hidden layer of 1024 ReLUs) on the flattened 8×8 inputs; the paper's
4-conv CNN on the digits upsampled (bilinear) to 28×28, from scratch, or pretrained on the other eight
digits (all 1436 of them, one-hot MSE, minibatch SGD) with a fresh 1-output head.

Training is full-batch GD on Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||² (sum loss, decay toward w0)
for t steps. η is the paper's where it is stable on these data (MLP: η = 0.001, t = 2000; here
λ_max(K0) ≈ 28, so η·λ_max ≈ 0.03 < 2), else 0.25 / λ_max(K0) (the CNNs, whose t is cut from 1000
to 150 for the CPU budget, so the paper's η·t would barely train them); both printed. The real CNN
from scratch diverges at η = 0.9 / λ_max(K0) (its NTK grows during training), hence 0.25.
λ > 0 rows use λ = 10 / (η t): then (1 - ηλ)^t ≈ e^-10, training converges to the regularized
optimum, and λ is ten times the implicit regularization 1/(ηt) of early stopping at λ = 0. The
paper's λ = 1e3 (same sum convention, App. F) is tied to its parameterization, its data size and
its η (there ηλ = 1) and does not transfer; tying λ to η t does.

Rows: linearization (ours: exact LOO of the linearized network on projected NTK features, 2000
coordinates per layer, discrete-GD filter), influence functions (exact GNH and LiSSA, damping 0.01
when λ = 0, App. A.3 Table 2; LiSSA's scale is automatic, 1.1·λ_max(GNH + μ), because the paper's
1000 belongs to its parameterization), MPE (self-prediction change only). Ground truth: cold-start
retraining without each of a random subset of training samples. Columns: Pearson (and Spearman) for
||w - w_{-i}||² and ||f(X_val) - f_{-i}(X_val)||².

The defaults fit the 30-minute budget of a shared 2-core CPU and are smaller than the paper's, above
all for the CNN (see ``--help``; the paper: all 1000 samples, t = 1000 for the CNN): MLP 180 training
samples, 30 removals, LiSSA depth 1000; CNNs 40 training samples, t = 150, 8 removals, LiSSA depth 100
on GNH minibatches of 8; pretraining 100 SGD steps of 64. Everything runs in float32 (a float64
check of the MLP brute force agreed with float32 to Pearson 1 - 2e-9).

    .venv/bin/python experiments/table1.py --out results/table1
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ntk_info.comparison import compare  # noqa: E402
from ntk_info.features import projected_features  # noqa: E402
from ntk_info.models import cnn, init_params, mlp  # noqa: E402
from ntk_info.training import reinit_head, targets, train  # noqa: E402

METHOD_LABELS = {"linearization": "Linearization (ours)", "influence_lissa": "Infl. functions (LiSSA)",
                 "influence_exact": "Infl. functions (exact GNH)", "mpe": "MPE"}
BASE_METHODS = ("linearization", "influence_lissa", "influence_exact", "mpe")


def label(method: str) -> str:
    """Row label: the fixed methods', or "Segments S = s (spacing)" for "segments:s[:spacing]"."""
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    parts = method.split(":")
    return f"Segments S = {parts[1]}" + (f" ({parts[2]})" if len(parts) == 3 else "")


def load_4v9(seed: int = 0):
    """All 4s and 9s of sklearn digits (8×8×1 in [0, 1]), ±1 targets, split in half with ``seed``; other digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0)[..., None].astype(np.float32)
    is_task = np.isin(digits.target, [4, 9])
    order = np.random.default_rng(seed).permutation(int(is_task.sum()))
    X, y = images[is_task][order], digits.target[is_task][order]
    half = X.shape[0] // 2
    Y = targets(y, kind="pm1", positive=9).astype(np.float32)
    others = np.setdiff1d(np.arange(10), [4, 9])
    y_pre = np.searchsorted(others, digits.target[~is_task])
    return (X[:half], Y[:half], X[half:], Y[half:]), (images[~is_task], targets(y_pre, 8).astype(np.float32))


def upsample(X, size: int = 28):
    """Bilinear resize of NHWC images to size×size."""
    return np.asarray(jax.image.resize(jnp.asarray(X), (X.shape[0], size, size, X.shape[-1]), "bilinear"), X.dtype)


def ntk_lambda_max(apply_fn, params, X, seed: int = 0) -> float:
    """λ_max of the NTK K0 = JJᵀ (sum loss: GD is stable for η < 2/(λ_max + λ)), from projected features."""
    phi = np.asarray(projected_features(apply_fn, params, X, coords_per_layer=2000, seed=seed, progress=False).phi,
                     np.float64)
    phi = phi.reshape(-1, phi.shape[-1])
    return float(np.linalg.eigvalsh(phi @ phi.T)[-1])


def as_f32(params):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)


def run_network(name, model, params0, X, Y, X_val, Y_val, *, steps, subset_size, lissa_depth, lr_factor, seed,
                log, lissa_batch_size=None, paper_lr=None, methods=BASE_METHODS, settings=("lam0", "lam")):
    """The λ ``settings`` of one network ("lam0": λ = 0, "lam": λ = 10/(ηt)): {key: table} with η, λ printed.

    η = min(paper_lr, lr_factor / λ_max(K0)): the paper's learning rate where it is stable, else the bound.
    ``retrain_seconds``: brute force's wall time per training run (reference + removals), the cost column's unit.
    """
    lmax = ntk_lambda_max(model.apply_fn, params0, X, seed)
    lr = lr_factor / lmax if paper_lr is None else min(paper_lr, lr_factor / lmax)
    lam = 10.0 / (lr * steps)
    out = {}
    for key, wd in (("lam0", 0.0), ("lam", lam)):
        if key not in settings:
            continue
        log(f"[{name}] n={X.shape[0]} λ_max(K0)={lmax:.4g}  η={lr:.4g} (η·λ_max={lr * lmax:.2f})  t={steps}  "
            f"λ={wd:.4g}  brute-force subset={subset_size}  LiSSA depth={lissa_depth} "
            f"(GNH batch {lissa_batch_size or 'full'})")
        t0 = time.perf_counter()
        table = compare(model.apply_fn, params0, X, Y, X_val, Y_val, lr=lr, steps=steps, weight_decay=wd,
                        subset_size=subset_size, lissa_depth=lissa_depth, lissa_batch_size=lissa_batch_size,
                        seed=seed, progress=False, methods=methods)
        trained = table.brute.params
        # one retraining: brute force's time per training run (the reference run and each removal; compilation
        # amortized over them); the methods' times include their own compilation and, for segments, a training run
        retrain_seconds = table.brute_seconds / (table.brute.indices.size + 1)
        log(f"[{name}, λ={wd:.4g}] one retraining {retrain_seconds:.2f} s (brute force / runs); cost of each method in retrainings: "
            + ", ".join(f"{label(r.method)} {r.seconds / retrain_seconds:.1f}×" for r in table.rows))
        train_err = float(np.mean(np.sign(np.asarray(model.apply_fn(trained, X))) != Y))
        val_err = float(np.mean(np.sign(np.asarray(model.apply_fn(trained, X_val))) != Y_val))
        log(table.to_markdown(measures=("weights", "predictions", "self")))
        for row in table.rows:
            if "info" in row.estimates:
                info = row.estimates["info"]
                log(f"[{name}, {row.method}] checkpoints {info['checkpoints']}; kernel drift ||K_s - K_0||/||K_0|| "
                    f"{[round(v, 3) for v in info['kernel_drift']]}; λmax(K_s)/λmax(K_0) "
                    f"{[round(v, 2) for v in info['lambda_max_ratio']]}; η λmax/2 "
                    f"{[round(v, 3) for v in info['stability_margin']]}; solvers {info['segment_solvers']}")
        log(f"[{name}, λ={wd:.4g}] train error {train_err:.3f}, val error {val_err:.3f}, "
            f"setting time {time.perf_counter() - t0:.1f} s\n")
        out[key] = dict(table=table, lr=lr, weight_decay=wd, steps=steps, lmax=lmax, train_err=train_err,
                        val_err=val_err, retrain_seconds=retrain_seconds)
    return out


def paper_table(results, columns, methods=BASE_METHODS) -> str:
    """Markdown in the paper's layout: measure × regularization × method rows, one column per network."""
    head = ["", "Reg.", "Method"] + [c for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for measure, measure_label in (("weights", "weights"), ("predictions", "predictions")):
        for key, reg in (("lam0", "λ = 0"), ("lam", "λ = 10/(ηt)")):
            if not any(key in r for r in results.values()):
                continue
            for j, method in enumerate(methods):
                cells = [measure_label if key == "lam0" and j == 0 else "", reg if j == 0 else "", label(method)]
                for c in columns:
                    if c not in results or key not in results[c]:
                        cells.append("not run")
                        continue
                    p = results[c][key]["table"].row(method).pearson[measure]
                    cells.append("—" if p is None else f"{p:.3f}")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_table(results, columns, methods=BASE_METHODS) -> str:
    """Wall time [s] of every method (and its cost in warm retrainings of the network) and of brute force."""
    cols = [(c, key) for c in columns if c in results for key in ("lam0", "lam") if key in results[c]]
    head = ["Method"] + [f"{c} ({'λ=0' if k == 'lam0' else 'λ>0'})" for c, k in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        lines.append("| " + " | ".join([label(method)] + [
            f"{results[c][k]['table'].row(method).seconds:.1f} "
            f"({results[c][k]['table'].row(method).seconds / results[c][k]['retrain_seconds']:.1f}×)"
            for c, k in cols]) + " |")
    lines.append("| " + " | ".join(["One retraining (brute force / runs)"] + [
        f"{results[c][k]['retrain_seconds']:.2f} (1×)" for c, k in cols]) + " |")
    lines.append("| " + " | ".join([f"Brute force (subset)"] + [
        f"{results[c][k]['table'].brute_seconds:.1f} ({results[c][k]['table'].brute.indices.size})"
        for c, k in cols]) + " |")
    return "\n".join(lines)


def figure(results, columns, path):
    """Scatter of linearization estimate vs retraining (weights, predictions) for every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(c, k) for c in columns if c in results for k in ("lam0", "lam") if k in results[c]]
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 6.2), squeeze=False)
    for j, (c, k) in enumerate(runs):
        table = results[c][k]["table"]
        for i, measure in enumerate(("weights", "predictions")):
            ax = axes[i, j]
            truth = table.brute.weight_change_sq if measure == "weights" else table.brute.prediction_change_sq
            shown = "linearization" if any(r.method == "linearization" for r in table.rows) else table.rows[0].method
            est = table.row(shown).estimates[measure]
            ax.scatter(truth, est, s=10)
            p = table.row(shown).pearson[measure]
            ax.set_title(f"{c}, {'λ=0' if k == 'lam0' else 'λ>0'}\n{measure}: r={p:.3f}" if p is not None else c,
                         fontsize=8)
            ax.set_xlabel("retraining", fontsize=8)
            ax.set_ylabel(label(shown), fontsize=8)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/table1", help="output directory (markdown, json, png)")
    ap.add_argument("--networks", default="mlp,cnn_pretrained,cnn_scratch",
                    help="comma-separated subset of mlp, cnn_pretrained, cnn_scratch (run in this order)")
    ap.add_argument("--mlp-steps", type=int, default=2000, help="t for the MLP (paper: 2000)")
    ap.add_argument("--mlp-subset", type=int, default=30, help="brute-force removals for the MLP")
    ap.add_argument("--mlp-lr", type=float, default=0.001,
                    help="the paper's η for the MLP, used when below lr_factor/λ_max(K0) (0: always the bound)")
    ap.add_argument("--mlp-lissa-depth", type=int, default=1000, help="LiSSA recursion steps for the MLP (paper: 1000)")
    ap.add_argument("--cnn-steps", type=int, default=150, help="t for the CNNs (paper: 1000; cut for the CPU budget)")
    ap.add_argument("--cnn-subset", type=int, default=8, help="brute-force removals for the CNNs")
    ap.add_argument("--cnn-train", type=int, default=40, help="training samples for the CNNs (of the 180)")
    ap.add_argument("--cnn-lissa-depth", type=int, default=100, help="LiSSA recursion steps for the CNNs")
    ap.add_argument("--cnn-lissa-batch", type=int, default=8, help="LiSSA GNH minibatch for the CNNs")
    ap.add_argument("--pretrain-steps", type=int, default=100, help="SGD steps pretraining on the other digits")
    ap.add_argument("--pretrain-batch", type=int, default=64, help="SGD batch size for pretraining")
    ap.add_argument("--lr-factor", type=float, default=0.25,
                    help="stability bound η ≤ lr_factor / λ_max(K0); the CNNs use the bound (their t is short)")
    ap.add_argument("--segments", default="1,2,4,8,16",
                    help="segmented-linearization rows: comma-separated S (checkpoints of the real run; '' for none)")
    ap.add_argument("--spacing", default="uniform", help="checkpoint spacing of the segment rows: uniform or early")
    ap.add_argument("--methods", default=",".join(BASE_METHODS),
                    help=f"comma-separated subset of {', '.join(BASE_METHODS)} (the segment rows come from --segments)")
    ap.add_argument("--regularization", default="lam0,lam",
                    help="λ settings to run: lam0 (λ = 0), lam (λ = 10/(ηt)), or both (comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "log.txt")
    log_file = open(log_path, "w")

    def log(msg):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    t_start = time.perf_counter()
    (X, Y, X_val, Y_val), (X_pre, Y_pre) = load_4v9(args.seed)
    log(f"digits 4 vs 9: {X.shape[0]} train, {X_val.shape[0]} validation; pretraining set {X_pre.shape[0]} "
        f"(other eight digits); jax {jax.__version__}, devices {jax.devices()}")
    networks = [s.strip() for s in args.networks.split(",") if s.strip()]
    columns = {"mlp": "MLP scratch", "cnn_scratch": "CNN scratch", "cnn_pretrained": "CNN pretrained"}
    unknown = [s for s in networks if s not in columns]
    if unknown:
        raise ValueError(f"--networks: unknown {unknown}; valid: {sorted(columns)}")
    seg_methods = tuple(f"segments:{int(S)}" + ("" if args.spacing == "uniform" else f":{args.spacing}")
                        for S in args.segments.split(",") if S.strip())
    base = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if set(base) - set(BASE_METHODS):
        raise ValueError(f"--methods: unknown {sorted(set(base) - set(BASE_METHODS))}; valid: {BASE_METHODS}")
    methods = base + seg_methods
    reg_settings = tuple(s.strip() for s in args.regularization.split(",") if s.strip())
    if not reg_settings or set(reg_settings) - {"lam0", "lam"}:
        raise ValueError(f"--regularization: expected lam0, lam or both, got {args.regularization!r}")
    results = {}
    cnn_idx = np.sort(np.random.default_rng(args.seed).choice(X.shape[0], size=min(args.cnn_train, X.shape[0]),
                                                              replace=False))
    for net in networks:
        if net == "mlp":
            model = mlp(num_outputs=1, width=1024)
            p0 = as_f32(init_params(model, (8, 8, 1), args.seed))
            results[columns[net]] = run_network(
                columns[net], model, p0, X, Y, X_val, Y_val, steps=args.mlp_steps, subset_size=args.mlp_subset,
                lissa_depth=args.mlp_lissa_depth, lr_factor=args.lr_factor, seed=args.seed, log=log,
                paper_lr=args.mlp_lr or None, methods=methods, settings=reg_settings)
        else:
            model = cnn(num_outputs=1)
            Xc, Xc_val = upsample(X[cnn_idx]), upsample(X_val)
            if net == "cnn_scratch":
                p0 = as_f32(init_params(model, (28, 28, 1), args.seed))
            else:
                t0 = time.perf_counter()
                pre_model = cnn(num_outputs=8)
                Xp = upsample(X_pre)
                p_init = as_f32(init_params(pre_model, (28, 28, 1), args.seed))
                sub = np.random.default_rng(args.seed).choice(Xp.shape[0], 128, replace=False)
                lr_pre = args.lr_factor / (ntk_lambda_max(pre_model.apply_fn, p_init, Xp[sub], args.seed)
                                           * Xp.shape[0] / sub.size)
                p_pre = train(pre_model.apply_fn, p_init, Xp, Y_pre, lr=lr_pre, steps=args.pretrain_steps,
                              batch_size=args.pretrain_batch, seed=args.seed)
                acc = float(np.mean(np.argmax(np.asarray(pre_model.apply_fn(p_pre, Xp)), 1) == Y_pre.argmax(1)))
                p0 = as_f32(reinit_head(model, p_pre, args.seed + 1, input_shape=(28, 28, 1)))
                log(f"[pretraining] {Xp.shape[0]} images of the other digits, one-hot MSE, SGD b={args.pretrain_batch}, "
                    f"η={lr_pre:.4g}, {args.pretrain_steps} steps: train accuracy {acc:.3f}, "
                    f"{time.perf_counter() - t0:.1f} s; fresh 1-output head")
            results[columns[net]] = run_network(
                columns[net], model, p0, Xc, Y[cnn_idx], Xc_val, Y_val, steps=args.cnn_steps,
                subset_size=args.cnn_subset, lissa_depth=args.cnn_lissa_depth, lr_factor=args.lr_factor,
                seed=args.seed, log=log, lissa_batch_size=min(args.cnn_lissa_batch, len(cnn_idx)), methods=methods,
                settings=reg_settings)
        order = [columns[s] for s in ("mlp", "cnn_scratch", "cnn_pretrained")]
        with open(os.path.join(args.out, "table1.md"), "w") as f:
            f.write("Pearson correlation with retraining (SI paper Table 1 layout)\n\n"
                    + paper_table(results, order, methods)
                    + "\n\nWall time [s]\n\n" + time_table(results, order, methods) + "\n")
    total = time.perf_counter() - t_start
    order = [columns[s] for s in ("mlp", "cnn_scratch", "cnn_pretrained")]
    log("Pearson correlation with retraining (SI paper Table 1 layout)\n\n" + paper_table(results, order, methods))
    log("\nWall time [s]\n\n" + time_table(results, order, methods))
    figure(results, order, os.path.join(args.out, "table1.png"))
    summary = {c: {k: dict(lr=v["lr"], weight_decay=v["weight_decay"], steps=v["steps"], lmax=v["lmax"],
                           train_err=v["train_err"], val_err=v["val_err"], retrain_seconds=v["retrain_seconds"],
                           brute_seconds=v["table"].brute_seconds, subset=v["table"].brute.indices.tolist(),
                           truth={"weights": np.asarray(v["table"].brute.weight_change_sq).tolist(),
                                  "predictions": np.asarray(v["table"].brute.prediction_change_sq).tolist()},
                           rows={r.method: dict(pearson=r.pearson, spearman=r.spearman, seconds=r.seconds,
                                                weights=np.asarray(r.estimates["weights"]).tolist()
                                                if r.estimates.get("weights") is not None else None,
                                                predictions=np.asarray(r.estimates["predictions"]).tolist()
                                                if r.estimates.get("predictions") is not None else None)
                                 for r in v["table"].rows})
                   for k, v in res.items()} for c, res in results.items()}
    summary["total_seconds"] = total
    summary["args"] = vars(args)
    with open(os.path.join(args.out, "table1.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"\ntotal time {total:.1f} s; wrote {args.out}/table1.md, table1.json, table1.png, log.txt")


if __name__ == "__main__":
    main()
