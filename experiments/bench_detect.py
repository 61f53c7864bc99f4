"""Mislabel and adversarial detection, every method side by side in one run (issue 10).

    python experiments/bench_detect.py --quick          # 1 seed, 600 samples, digits + tabular-hard, + FGSM
    python experiments/bench_detect.py                  # 3 seeds, 4 data sets, + memorized run, + FGSM

Data (all generated from the seed, nothing downloaded):
  digits          sklearn digits, 8x8, 10 classes (train/held-out 70/30; held-out halves = validation/test)
  breast-cancer   sklearn breast cancer, 2 classes, standardized
  tabular-hard    make_classification: 10 classes, 2 clusters per class, class_sep 2, 10 informative +
                  5 redundant + 15 label-irrelevant features, 2500 samples (an MLP reaches ~70 % test accuracy)
  digits-corrupt  digits with Gaussian pixel noise (σ = 0.4), a random 4x4 occluding patch per image, clipped
Noise on the training labels only (validation/test keep clean labels): 10 % uniform (to another class),
10 % class-conditional (to the most confusable class of the true class, from the confusion matrix of a
5-fold logistic regression on the clean training labels).

Methods (higher = more suspicious; "seconds" is the time of everything the score needs):
  init_*     ntk_info.score at the initialization, lr = 1/λ_max, 1000 GD steps (the CLI's defaults)
  trained_*  linearized at the Adam-trained weights w* (early stopping), t = ∞, λ by exact LOO
  head_*     trained body + fresh head ("trained-head"), t = ∞, λ by exact LOO
  *_fsi, *_si, *_loo_residual, *_loo_margin (−margin), *_loo_prob (−P(y | LOO, softmax with LOO-fitted T))
  influence, mpe   at w*, GNH with damping λ (the λ the trained point chose)
  train_loss, aum  at w* / over its training epochs (area under the margin, Pleiss et al. 2020)
  cleanlab         1 − self-confidence of 5-fold out-of-sample probabilities of sklearn MLP-256 (the CLI's)
  cleanlab_on_head_loo   cleanlab.rank.get_label_quality_scores on the head_* LOO probabilities
  pool_loo_prob    −mean over the points (init, trained, head; trained and head when memorized) of the LOO
                   log-probability of the given label (apps.detect.pooled_loo_log_prob); seconds: all points
  crossfit_*       ntk_info.crossfit: 5 networks (Adam, cross-entropy, early stopping), each trained without one
                   fold; every sample left out of the linearized network that never saw it (t = ∞, λ per fold
                   by the held-out fold's LOO likelihood, λ = ∞ = the out-of-fold prediction); *_loo_prob, *_margin
  pool_crossfit    −mean LOO log-probability over init, trained, head and crossfit (trained, head, crossfit when
                   memorized); pool_crossfit_trained: trained, head, crossfit (what `ntk-info detect`'s
                   "pooled" computes); pool_init_crossfit: init and crossfit
Wall times are on whatever CPU this runs on; with other jobs on the machine compare ratios only.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from ntk_info import data as data_mod  # noqa: E402
from ntk_info import score  # noqa: E402
from ntk_info.apps import detect  # noqa: E402
from ntk_info.crossfit import crossfit_leave_one_out  # noqa: E402
from ntk_info.features import ntk_lambda_max  # noqa: E402
from ntk_info.linearize import linearization_point, score_at, train_adam  # noqa: E402
from ntk_info.models import init_params, mlp  # noqa: E402
from ntk_info.training import targets  # noqa: E402


# ----------------------------------------------------------------------------- data

def load(name, seed, n_train=None):
    """(X, y, X_val, y_val, X_test, y_test, C): training, validation (early stopping, F-SI) and test splits;
    ``n_train``: a stratified subsample of the training split (held-out splits unchanged)."""
    from sklearn.model_selection import train_test_split

    X, y, X_val, y_val, X_test, y_test, C = _load(name, seed)
    if n_train is not None and n_train < len(y):
        keep, _ = train_test_split(np.arange(len(y)), train_size=n_train, random_state=seed, stratify=y)
        keep = np.sort(keep)
        X, y = X[keep], y[keep]
    return X, y, X_val, y_val, X_test, y_test, C


def _load(name, seed):
    from sklearn.model_selection import train_test_split

    if name == "tabular-hard":
        from sklearn.datasets import make_classification

        X, y = make_classification(n_samples=2500, n_features=30, n_informative=10, n_redundant=5, n_classes=10,
                                   n_clusters_per_class=2, class_sep=2.0, random_state=seed)
        tr, ho = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=y)
        mean, std = X[tr].mean(0), X[tr].std(0)
        X = (X - mean) / std
        Xtr, ytr, Xho, yho = X[tr], y[tr], X[ho], y[ho]
        C = 10
    else:
        base = "digits" if name == "digits-corrupt" else name
        ds = data_mod.load_dataset(base, seed=seed)
        Xtr, ytr, Xho, yho, C = ds.X, ds.y, ds.X_val, ds.y_val, ds.num_classes
        if name == "digits-corrupt":
            rng = np.random.default_rng(1000 + seed)

            def corrupt(X):
                X = X + rng.normal(scale=0.4, size=X.shape)
                for img in X:
                    r, c = rng.integers(0, 5, size=2)
                    img[r:r + 4, c:c + 4] = 0.0
                return np.clip(X, 0.0, 1.0)

            Xtr, Xho = corrupt(Xtr.copy()), corrupt(Xho.copy())
    return Xtr, ytr, Xho[::2], yho[::2], Xho[1::2], yho[1::2], C


def class_conditional_noise(X, y, C, rate, seed):
    """Flip round(rate·n) random samples to the most confusable other class of their true class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import cross_val_predict

    pred = cross_val_predict(LogisticRegression(max_iter=300), X.reshape(len(X), -1), y, cv=5)
    conf = confusion_matrix(y, pred, labels=np.arange(C)).astype(float)
    np.fill_diagonal(conf, -1)
    target = conf.argmax(axis=1)
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
    noisy = y.copy()
    noisy[flip] = target[y[flip]]
    return noisy, noisy != y


# ----------------------------------------------------------------------------- methods

def ntk_scores(prefix, result, labels):
    """The five ntk_info detectors from one ScoreResult (higher = more suspicious)."""
    loo = detect.loo_detection_scores(result, labels)
    out = {f"{prefix}_loo_residual": np.linalg.norm(result.loo_residuals, axis=1),
           f"{prefix}_loo_margin": -loo["loo_margin"], f"{prefix}_loo_prob": -loo["loo_prob_given"],
           f"{prefix}_si": np.asarray(result.si)}
    if result.fsi is not None:
        out[f"{prefix}_fsi"] = np.asarray(result.fsi)
    return out, loo


def run_config(name, X, y_true, labels, X_val, y_val, X_test, y_test, C, seed, *, memorize=False, methods="all"):
    """Every detector on one training set; returns ({method: scores}, {method: seconds}, info)."""
    Y, Y_val = targets(labels, C), targets(y_val, C)
    model = mlp(C, width=256)
    params0 = init_params(model, X.shape[1:], seed=seed)
    scores, seconds, info = {}, {}, {}

    pooled, pooled_seconds = [], 0.0  # ScoreResults of every point, for pooled_loo_prob
    if not memorize:
        t = time.perf_counter()
        lr = 1.0 / ntk_lambda_max(model.apply_fn, params0, X, seed=seed)
        res = score(model.apply_fn, params0, X, Y, X_val, lr=lr, steps=1000, discrete=True, seed=seed, progress=False)
        s, _ = ntk_scores("init", res, labels)
        dt = time.perf_counter() - t
        scores.update(s)
        seconds.update({k: dt for k in s})
        pooled.append(res)
        pooled_seconds += dt

    t = time.perf_counter()
    options = dict(patience=None, max_epochs=800, lr=1e-2) if memorize else {}
    trained = train_adam(model.apply_fn, params0, X, Y, X_val, Y_val, seed=seed, **options)
    t_train = time.perf_counter() - t
    out = np.asarray(model.apply_fn(trained.params, X))
    info["net_test_acc"] = float(np.mean(np.argmax(np.asarray(model.apply_fn(trained.params, X_test)), 1) == y_test))
    info["net_train_loss"] = float(trained.train_loss[-1] if memorize else trained.train_loss[trained.best_epoch - 1])
    info["epochs"] = trained.best_epoch
    scores["train_loss"] = 0.5 * np.sum((out - Y) ** 2, axis=1)
    scores["aum"] = -trained.aum
    seconds["train_loss"] = seconds["aum"] = t_train

    lam_trained = None
    for prefix in ("trained", "head"):
        t = time.perf_counter()
        params = trained.params if prefix == "trained" else linearization_point(
            "pretrained", trained.params, X, model=model, pretrained_params=trained.params, head_seed=seed + 1).params
        res = score_at(model.apply_fn, params, X, Y, X_val, seed=seed)
        s, loo = ntk_scores(prefix, res, labels)
        dt = time.perf_counter() - t + t_train
        pooled.append(res)
        pooled_seconds += dt - (t_train if prefix == "head" else 0.0)  # the network is trained once
        scores.update(s)
        seconds.update({k: dt for k in s})
        info[f"{prefix}_lambda/mean_diag"] = res.settings["weight_decay"] / res.settings["kernel_mean_diagonal"]
        info[f"{prefix}_loo_acc_true"] = float(np.mean(loo["suggested_label"] == y_true))
        if prefix == "trained":
            lam_trained = res.settings["weight_decay"]
        else:
            from cleanlab.rank import get_label_quality_scores

            t2 = time.perf_counter()
            scores["cleanlab_on_head_loo"] = 1.0 - get_label_quality_scores(labels, loo["loo_probabilities"])
            seconds["cleanlab_on_head_loo"] = dt + time.perf_counter() - t2

    t = time.perf_counter()
    scores["pool_loo_prob"] = -detect.pooled_loo_log_prob(pooled, labels)
    seconds["pool_loo_prob"] = pooled_seconds + time.perf_counter() - t

    t = time.perf_counter()
    cf = crossfit_leave_one_out(model.apply_fn, params0, X, labels, X_val, y_val, num_classes=C, seed=seed,
                                train_options=dict(patience=None, max_epochs=800, lr=1e-2) if memorize else None)
    cf_scores = detect.loo_output_scores(cf.loo_outputs, labels)
    dt = time.perf_counter() - t
    scores["crossfit_loo_prob"] = -cf_scores["loo_log_prob_given"]
    scores["crossfit_loo_margin"] = -cf_scores["loo_margin"]
    seconds["crossfit_loo_prob"] = seconds["crossfit_loo_margin"] = dt
    info["crossfit_weight_decay"] = cf.settings["weight_decay_per_fold"]
    logp = [detect.loo_detection_scores(r, labels)["loo_log_prob_given"] for r in pooled]
    scores["pool_crossfit"] = -np.mean(logp + [cf_scores["loo_log_prob_given"]], axis=0)
    seconds["pool_crossfit"] = pooled_seconds + dt
    scores["pool_crossfit_trained"] = -np.mean(logp[-2:] + [cf_scores["loo_log_prob_given"]], axis=0)
    seconds["pool_crossfit_trained"] = pooled_seconds - seconds.get("init_si", 0.0) + dt
    if not memorize:
        scores["pool_init_crossfit"] = -np.mean([logp[0], cf_scores["loo_log_prob_given"]], axis=0)
        seconds["pool_init_crossfit"] = seconds["init_si"] + dt

    t = time.perf_counter()
    infl, mpe = detect.influence_and_mpe(model.apply_fn, trained.params, X, Y, weight_decay=0.0, damping=lam_trained,
                                         seed=seed)
    scores["influence"], scores["mpe"] = infl, mpe
    seconds["influence"] = seconds["mpe"] = time.perf_counter() - t + t_train

    if not memorize:
        t = time.perf_counter()
        scores["cleanlab"] = detect.cleanlab_scores(X, labels, num_classes=C, seed=seed)
        seconds["cleanlab"] = time.perf_counter() - t
    return scores, seconds, info


def adversarial(seed, eps_list, fraction=0.1, n_train=None):
    """FGSM on digits against the Adam-trained network; detectors on the attacked training set."""
    rows = []
    X, y, X_val, y_val, X_test, y_test, C = load("digits", seed, n_train)
    model = mlp(C, width=256)
    params0 = init_params(model, X.shape[1:], seed=seed)
    net = train_adam(model.apply_fn, params0, X, targets(y, C), X_val, targets(y_val, C), seed=seed)
    for eps in eps_list:
        adv = data_mod.fgsm(model.apply_fn, net.params, X, y, num_classes=C, eps=eps, fraction=fraction, seed=seed)
        if adv.is_adversarial.sum() < 2:
            print(f"FGSM eps={eps}: {int(adv.is_adversarial.sum())} successes, skipped", flush=True)
            continue
        scores, seconds, info = run_config("digits-fgsm", adv.X, y, y, X_val, y_val, X_test, y_test, C, seed)
        new = [{"dataset": f"digits FGSM eps={eps}", "noise": f"adversarial ({int(adv.is_adversarial.sum())}, "
                f"success {adv.success_rate:.2f})", "seed": seed, **r, "seconds": seconds[r["method"]]}
               for r in detect.detection_metrics(scores, adv.is_adversarial)]
        rows += new
        print(summarize(new), flush=True)
        print(f"FGSM eps={eps}: {info}", flush=True)
    return rows


# ----------------------------------------------------------------------------- tables

def summarize(rows):
    """Mean over seeds per (dataset, noise, method); best ntk_info score vs cleanlab per configuration."""
    keys = sorted({(r["dataset"], r["noise"]) for r in rows}, key=str)
    lines = []
    for dataset, noise in keys:
        sub = [r for r in rows if r["dataset"] == dataset and r["noise"] == noise]
        methods = sorted({r["method"] for r in sub})
        agg = []
        for m in methods:
            rs = [r for r in sub if r["method"] == m]
            agg.append({"method": m, **{k: float(np.mean([r[k] for r in rs])) for k in
                                         ("auroc", "ap", "found_top10", "seconds")}, "seeds": len(rs)})
        agg.sort(key=lambda r: -r["ap"])
        lines.append(f"\n## {dataset} — {noise} ({agg[0]['seeds']} seed(s))")
        lines.append(f"{'method':24s} {'AUROC':>7s} {'AP':>7s} {'top10%':>7s} {'seconds':>8s}")
        for r in agg:
            lines.append(f"{r['method']:24s} {r['auroc']:7.4f} {r['ap']:7.4f} {r['found_top10']:7.3f} "
                         f"{r['seconds']:8.1f}")
        ours = [r for r in agg if r["method"].split("_")[0] in ("init", "trained", "head", "pool", "crossfit")]
        base = [r for r in agg if r["method"] == "cleanlab"]
        if ours and base:
            best_auc = max(ours, key=lambda r: r["auroc"])
            best_ap = max(ours, key=lambda r: r["ap"])
            lines.append(f"best ntk_info: AUROC {best_auc['auroc']:.4f} ({best_auc['method']}), AP {best_ap['ap']:.4f} "
                         f"({best_ap['method']}); cleanlab AUROC {base[0]['auroc']:.4f}, AP {base[0]['ap']:.4f} -> "
                         + ("AT OR ABOVE" if best_auc["auroc"] >= base[0]["auroc"] and best_ap["ap"] >= base[0]["ap"]
                            else "BELOW"))
    return "\n".join(lines)


def write(path, rows):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, digits + tabular-hard, FGSM table")
    parser.add_argument("--datasets", help="comma-separated subset of digits,breast-cancer,tabular-hard,digits-corrupt")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: 1 quick, 3 full)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from here (to split seeds over processes)")
    parser.add_argument("--runs", default="uniform,class-conditional,memorized,adversarial",
                        help="which runs (comma-separated): uniform, class-conditional, memorized (digits), "
                             "adversarial (FGSM on digits); e.g. to split the work over processes")
    parser.add_argument("--n-train", type=int, help="training samples per data set (default: 600 quick, all full)")
    parser.add_argument("--out", default="results/bench_detect.csv")
    args = parser.parse_args(argv)
    datasets = (args.datasets.split(",") if args.datasets else
                ["digits", "tabular-hard"] if args.quick else ["digits", "breast-cancer", "tabular-hard",
                                                               "digits-corrupt"])
    seeds = range(args.first_seed, args.first_seed + (args.seeds or (1 if args.quick else 3)))
    wanted = set(args.runs.split(","))
    n_train = args.n_train or (600 if args.quick else None)
    rows, infos = [], []
    start = time.perf_counter()
    for seed in seeds:
        for name in datasets:
            X, y, X_val, y_val, X_test, y_test, C = load(name, seed, n_train)
            uniform, bad_u, _ = data_mod.add_label_noise(y, 0.1, C, seed=seed)
            cc, bad_c = class_conditional_noise(X, y, C, 0.1, seed)
            runs = [("uniform", "10% uniform", uniform, bad_u, False),
                    ("class-conditional", "10% class-conditional", cc, bad_c, False)]
            if name == "digits" and (not args.quick or seed == 0):
                runs.append(("memorized", "10% uniform, memorized (Adam lr 1e-2, 800 epochs, no early stopping)",
                             uniform, bad_u, True))
            for kind, noise, labels, is_bad, memorize in runs:
                if kind not in wanted:
                    continue
                t = time.perf_counter()
                scores, seconds, info = run_config(name, X, y, labels, X_val, y_val, X_test, y_test, C, seed,
                                                   memorize=memorize)
                new = [{"dataset": name, "noise": noise, "seed": seed, **r, "seconds": seconds[r["method"]]}
                       for r in detect.detection_metrics(scores, is_bad)]
                rows += new
                write(args.out, rows)
                print(summarize(new), flush=True)
                infos.append({"dataset": name, "noise": noise, "seed": seed, **info})
                print(f"[{time.perf_counter() - start:7.0f}s] {name} / {noise} / seed {seed}: {info} "
                      f"({time.perf_counter() - t:.0f}s)", flush=True)
        if "adversarial" in wanted and (seed == 0 or not args.quick):
            rows += adversarial(seed, (0.05, 0.1), n_train=n_train)
            write(args.out, rows)
    print(summarize(rows))
    print("\nnetworks:")
    for info in infos:
        print("  ", info)
    print(f"\nrows: {args.out}; total {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
