"""``ntk-info``: score every training sample, find bad ones, summarize a dataset, and report.

Heavy modules (JAX, neural-tangents, which imports TensorFlow) are imported inside the subcommands,
so ``ntk-info --help`` stays fast. Every subcommand writes CSV files and ``report.html`` into
``--out``; errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = ["main", "build_parser"]

DESCRIPTION = """\
Unique information of every training sample (SI, F-SI), computed in closed form on the
linearized network: how much the weights / the predictions would change without the sample.

Start here:   ntk-info demo --out results/demo
  (digits, 10 classes, 1000 training samples, 10% of the labels flipped: scores, detection of the
  flipped labels against cleanlab, dataset summarization, and an HTML report; ~5-10 min on 2 cores)

Your own data: --data digits|breast-cancer|iris|wine, or a file: .npz (arrays X, y, optional X_val,
y_val, source, group), .csv (--label-column, --source-column, --group-column), or MNIST idx images
(train-images-idx3-ubyte[.gz] with --labels train-labels-idx1-ubyte[.gz]).
Models: --model mlp|cnn|resnet or package.module:factory (a function returning ntk_info.models.Model).
"""

EPILOG = """\
examples:
  ntk-info score --data digits --n-train 500 --out results/scores
  ntk-info detect --data digits --noise 0.1 --out results/noise
  ntk-info detect --data digits --adversarial 0.1 --eps 0.05 --out results/adv
  ntk-info summarize --data digits --classes 4,9 --iterative --out results/summary
  ntk-info sources --data my.npz --out results/sources       (needs 'source' or 'group' arrays)
  ntk-info compare --data digits --subset-size 20 --out results/compare
  ntk-info report results/noise                                  (re-render report.html)

Results: scores.csv (one row per training sample), detection.csv, summarize.csv, sources.csv,
compare.csv, settings.json, report.html and figures/*.png in --out.
"""

RESULT_FILES = ("scores.csv", "detection.csv", "summarize.csv", "sources.csv", "compare.csv", "settings.json",
                "inputs.npz", "report.html", "figures")
DETECT_METHODS = ("fsi", "si", "loo_residual", "influence", "mpe", "train_loss", "cleanlab")


class CLIError(ValueError):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- small helpers


class Stages:
    """Wall time per named stage, printed as a summary at the end."""

    def __init__(self, quiet=False):
        self.times = {}
        self.quiet = quiet

    @contextlib.contextmanager
    def __call__(self, name):
        if not self.quiet and name not in self.times:  # repeated stages (rescoring) are announced once
            print(f"[{name}] ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def summary(self):
        total = sum(self.times.values())
        lines = ["timing (s):"] + [f"  {k:<28}{v:8.1f}" for k, v in self.times.items()] + [f"  {'total':<28}{total:8.1f}"]
        return "\n".join(lines)


def _quiet_imports():
    """Silence TensorFlow/absl log noise and turn on float64 before the first JAX computation."""
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    with contextlib.suppress(ImportError):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    # TensorFlow's C++ logger writes to fd 2 before absl is initialized, whatever TF_CPP_MIN_LOG_LEVEL says:
    # hide stderr at the OS level while neural-tangents (and with it TensorFlow) is imported.
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with contextlib.suppress(ImportError):
            import neural_tangents  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    import jax

    jax.config.update("jax_enable_x64", True)


def _prepare_out(out, force):
    """Create ``out``; refuse a non-empty one without --force; with --force remove earlier results only."""
    if os.path.isdir(out) and os.listdir(out):
        if not force:
            raise CLIError(f"output directory {out!r} exists and has files; pass --force to overwrite it")
        for name in RESULT_FILES:
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    elif os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out!r} is a file, expected a directory")
    os.makedirs(out, exist_ok=True)


def _floats(text, name):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{name}: expected comma-separated numbers, got {text!r}") from None


# ----------------------------------------------------------------------------- the pipeline


class Run:
    """Data, model and training settings shared by the subcommands (built from the parsed arguments)."""

    def __init__(self, args, stages, check=None):
        """``check(self)`` runs after the data are loaded and before the (slow) model set-up."""
        import numpy as np

        from ntk_info import data as data_mod
        from ntk_info.models import get_model, init_params
        from ntk_info.training import targets

        self.args, self.stages = args, stages
        self.progress = not args.no_progress
        classes = None
        if args.classes:
            classes = [int(c) if c.strip().lstrip("-").isdigit() else c.strip() for c in args.classes.split(",")]
        with stages("load data"):
            ds = data_mod.load_dataset(args.data, labels=args.labels, val_fraction=args.val_fraction, seed=args.seed,
                                       n_train=args.n_train, classes=classes, label_column=args.label_column,
                                       source_column=args.source_column, group_column=args.group_column)
        self.ds = ds
        self.true_labels = ds.y
        self.labels = ds.y
        self.is_noisy = None
        if args.noise:
            self.labels, self.is_noisy, _ = data_mod.add_label_noise(ds.y, args.noise, ds.num_classes, seed=args.seed)
        self.X = ds.X
        # validation half for F-SI, test half for accuracies (so accuracy is measured on unseen data)
        self.X_val, self.y_val = ds.X_val[::2], ds.y_val[::2]
        self.X_test, self.y_test = ds.X_val[1::2], ds.y_val[1::2]
        self.is_adversarial = None
        if check is not None:
            check(self)
        with stages("build model"):
            kwargs = {"width": args.width} if args.model == "mlp" else {}
            self.model = get_model(args.model, ds.num_classes, **kwargs)
            self.params0 = init_params(self.model, ds.X.shape[1:], seed=args.seed)
        self.Y = targets(self.labels, ds.num_classes)
        self.lr = args.lr if args.lr is not None else self.auto_lr(self.model, self.params0)
        self.steps = args.steps
        self.weight_decay = args.weight_decay
        self.damping = args.weight_decay if args.weight_decay > 0 else 1.0 / (self.lr * self.steps)
        self.settings = {"data": args.data, "n_train": int(ds.X.shape[0]), "n_val": int(self.X_val.shape[0]),
                         "n_test": int(self.X_test.shape[0]), "num_classes": ds.num_classes, "noise": args.noise,
                         "model": args.model, "width": args.width if args.model == "mlp" else None,
                         "lr": self.lr, "lr_rule": "given" if args.lr is not None else "1/lambda_max(NTK at init)",
                         "steps": self.steps, "weight_decay": self.weight_decay,
                         "influence/MPE damping": self.damping,
                         "influence/MPE Jacobian": "exact when n*k <= 2000, else projected features at the trained "
                                                   "weights", "coords_per_layer": args.coords_per_layer,
                         "projection": args.projection,
                         "kernel": "output-averaged (trace) NTK, k outputs share one n x n kernel",
                         "seed": args.seed}
        self._trained = None
        np.random.seed(args.seed)

    def auto_lr(self, model, params0):
        """η = 1/λ_max of the NTK at init (sum loss; GD is stable for η·λ_max < 2), by power iteration."""
        import jax
        import jax.numpy as jnp
        from jax.flatten_util import ravel_pytree

        with self.stages("estimate lr"):
            flat, unravel = ravel_pytree(params0)
            X = jnp.asarray(self.X)
            f = lambda w: model.apply_fn(unravel(w), X)  # noqa: E731
            _, jvp = jax.linearize(f, flat)
            vjp = jax.linear_transpose(jvp, flat)
            gnh = jax.jit(lambda v: vjp(jvp(v))[0])
            v = jax.random.normal(jax.random.PRNGKey(self.args.seed), flat.shape, flat.dtype)
            lam = 0.0
            for _ in range(30):
                w = gnh(v / jnp.linalg.norm(v))
                lam, v = float(jnp.linalg.norm(w)), w
        return 1.0 / lam

    def trained(self):
        """The real network trained on (X, Y): ``steps`` full-batch GD steps (ntk_info.training.train)."""
        if self._trained is None:
            from ntk_info.training import train

            with self.stages("train network"):
                self._trained = train(self.model.apply_fn, self.params0, self.X, self.Y, lr=self.lr, steps=self.steps,
                                      weight_decay=self.weight_decay)
        return self._trained

    def score(self):
        """ntk_info.score on the training samples, kernel averaged over outputs (trace kernel)."""
        import ntk_info

        with self.stages("scores (F-SI, SI, LOO)"):
            return ntk_info.score(self.model.apply_fn, self.params0, self.X, self.Y, self.X_val, lr=self.lr, steps=self.steps,
                                  weight_decay=self.weight_decay, discrete=True,
                                  coords_per_layer=self.args.coords_per_layer, seed=self.args.seed,
                                  method=self.args.projection, kernel="trace", progress=self.progress)

    def subset_scorer(self, by):
        """score_fn(kept) for iterative removal: features are computed once (they do not depend on which
        samples are kept), then exact LOO on the kept rows only (the same trace kernel as ``score``)."""
        import numpy as np

        import ntk_info
        from ntk_info import scores as score_mod

        with self.stages("features for rescoring"):
            feats = ntk_info.projected_features(self.model.apply_fn, self.params0, self.X,
                                                coords_per_layer=self.args.coords_per_layer, seed=self.args.seed,
                                                method=self.args.projection, progress=False)
            val = feats.projection.features(self.X_val, progress=False)
            n, k = feats.outputs.shape
            # trace kernel K_ij = (1/k) Σ_a ⟨Φ_ia, Φ_ja⟩, formed once; each rescoring takes its kept block
            phi = np.asarray(feats.phi).reshape(n, -1)
            kernel = phi @ phi.T / k
            cross = np.asarray(val.phi).reshape(val.phi.shape[0], -1) @ phi.T / k
            del phi
        residuals = self.Y - np.asarray(feats.outputs)

        def score_fn(kept):
            with self.stages("rescoring (iterative)"):
                loo = ntk_info.leave_one_out(kernel[np.ix_(kept, kept)], residuals=residuals[kept], lr=self.lr,
                                             steps=self.steps, weight_decay=self.weight_decay, discrete=True,
                                             cross_kernel=cross[:, kept], progress=False)
            if by == "fsi":
                return np.asarray(score_mod.fsi(loo))
            if by == "si":
                return np.asarray(score_mod.si_isotropic(loo))
            # Y_i - f_{-i}(x_i) = (Y_i - f(x_i)) + (f(x_i) - f_{-i}(x_i)), as in ntk_info.score
            loo_res = (np.asarray(loo.fitted_residuals).reshape(kept.size, k)
                       + np.asarray(loo.self_prediction_change).reshape(kept.size, k))
            return np.linalg.norm(loo_res, axis=1)

        return score_fn

    def sample_rows(self, result, extra=None):
        """Per-sample rows for scores.csv."""
        import numpy as np

        n = self.X.shape[0]
        cols = {"index": np.arange(n), "label": self.labels}
        if self.is_noisy is not None:
            cols["true_label"] = self.true_labels
            cols["is_noisy"] = self.is_noisy.astype(int)
        if self.ds.source is not None:
            cols["source"] = self.ds.source
        if self.ds.group is not None:
            cols["group"] = self.ds.group
        cols["fsi"] = np.asarray(result.fsi)
        cols["si"] = np.asarray(result.si)
        cols["loo_residual"] = np.linalg.norm(np.asarray(result.loo_residuals).reshape(n, -1), axis=1)
        cols.update(extra or {})
        return [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in cols.items()} for i in range(n)]

    def save_inputs(self, X=None):
        import numpy as np

        if self.ds.image_shape is not None:
            np.savez_compressed(os.path.join(self.args.out, "inputs.npz"), X=self.X if X is None else X,
                                image_shape=np.array(self.ds.image_shape))


def _finish(run, extra_settings=None):
    """Write settings.json and the report; print where it is and the timing summary."""
    from ntk_info.report import build_report

    settings = dict(run.settings, **(extra_settings or {}))
    with run.stages("report"):
        with open(os.path.join(run.args.out, "settings.json"), "w") as handle:
            json.dump(dict(settings, timings=run.stages.times), handle, indent=1, default=str)
        path = build_report(run.args.out, title=f"ntk_info: {run.args.command} on {run.args.data}")
        # rewrite with the report stage's own time included
        with open(os.path.join(run.args.out, "settings.json"), "w") as handle:
            json.dump(dict(settings, timings=run.stages.times), handle, indent=1, default=str)
    print(run.stages.summary(), file=sys.stderr)
    print(f"report: {os.path.abspath(path)}")
    return 0


# ----------------------------------------------------------------------------- subcommands


def _write(run, name, rows):
    from ntk_info.report import write_csv

    write_csv(os.path.join(run.args.out, name), rows)


def _score_cmd(args, stages):
    run = Run(args, stages)
    result = run.score()
    _write(run, "scores.csv", run.sample_rows(result))
    run.save_inputs()
    return _finish(run)


def _detection_scores(run, result, methods, X):
    """Every requested detector's per-sample scores (higher = more suspicious)."""
    import numpy as np

    from ntk_info.apps import detect

    n = run.X.shape[0]
    out = {}
    if "fsi" in methods:
        out["fsi"] = np.asarray(result.fsi)
    if "si" in methods:
        out["si"] = np.asarray(result.si)
    if "loo_residual" in methods:
        out["loo_residual"] = np.linalg.norm(np.asarray(result.loo_residuals).reshape(n, -1), axis=1)
    params = run.trained() if {"influence", "mpe", "train_loss"} & set(methods) else None
    if "train_loss" in methods:
        out["train_loss"] = detect.training_loss(run.model.apply_fn, params, X, run.Y)
    if {"influence", "mpe"} & set(methods):
        with run.stages("influence and MPE"):
            infl, mpe = detect.influence_and_mpe(run.model.apply_fn, params, X, run.Y, weight_decay=run.weight_decay,
                                                 damping=run.damping, coords_per_layer=run.args.coords_per_layer,
                                                 seed=run.args.seed)
        out.update({k: v for k, v in (("influence", infl), ("mpe", mpe)) if k in methods})
    if "cleanlab" in methods:
        with run.stages("cleanlab (5-fold MLP 256)"):
            out["cleanlab"] = detect.cleanlab_scores(X, run.labels, num_classes=run.ds.num_classes, seed=run.args.seed)
    return out


def _parse_methods(text):
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DETECT_METHODS]
    if unknown or not methods:
        raise CLIError(f"--methods: unknown {unknown or methods}; valid: {','.join(DETECT_METHODS)}")
    return methods


def _detect(run, methods):
    """Score, then run every detector against the flipped labels or the adversarial inputs."""
    from ntk_info.apps import detect

    extra_settings = {}
    bad_name = "is_noisy"
    if run.args.adversarial:
        from ntk_info.data import fgsm

        with run.stages("FGSM attack"):
            adv = fgsm(run.model.apply_fn, run.trained(), run.X, run.labels, num_classes=run.ds.num_classes,
                       eps=run.args.eps, fraction=run.args.adversarial, seed=run.args.seed)
        if adv.is_adversarial.sum() == 0:
            raise CLIError(f"--eps {run.args.eps}: no FGSM attack succeeded ({adv.attempted} tried); use a larger --eps")
        run.X = adv.X
        run._trained = None  # the detectors look at a network trained on the attacked set
        run.is_adversarial = adv.is_adversarial
        bad_name = "is_adversarial"
        extra_settings.update(fgsm_eps=adv.eps, fgsm_success_rate=adv.success_rate,
                              adversarial=int(adv.is_adversarial.sum()))
    result = run.score()
    scores = _detection_scores(run, result, methods, run.X)
    is_bad = run.is_noisy if bad_name == "is_noisy" else run.is_adversarial
    rows = detect.detection_metrics(scores, is_bad)
    for r in rows:
        r["bad"] = bad_name
    extra = {k: v for k, v in scores.items() if k not in ("fsi", "si", "loo_residual")}
    if bad_name == "is_adversarial":
        extra["is_adversarial"] = run.is_adversarial.astype(int)
    _write(run, "scores.csv", run.sample_rows(result, extra))
    _write(run, "detection.csv", rows)
    run.save_inputs()
    print(_format_table(rows, ("method", "auroc", "ap", "found_top10", "found_top20")))
    return result, extra_settings


def _format_table(rows, keys):
    lines = ["  ".join(f"{k:>12}" for k in keys)]
    for r in rows:
        lines.append("  ".join(f"{r[k]:>12.4f}" if isinstance(r[k], float) else f"{r[k]:>12}" for k in keys))
    return "\n".join(lines)


def _check_detect(run):
    if run.args.adversarial and run.is_noisy is not None:
        raise CLIError("--adversarial and --noise: choose one kind of bad sample to detect (pass --noise 0)")
    if not run.args.adversarial and run.is_noisy is None:
        raise CLIError("detect: nothing to detect; pass --noise RATE (e.g. 0.1) or --adversarial FRACTION")


def _detect_cmd(args, stages):
    methods = _parse_methods(args.methods)
    run = Run(args, stages, check=_check_detect)
    _, extra_settings = _detect(run, methods)
    return _finish(run, extra_settings)


def _summarize(run, result):
    """Removal masks for every strategy and fraction, retrained all at once; rows for summarize.csv."""
    import numpy as np

    from ntk_info.apps.summarize import iterative_keep_masks, keep_masks, retrain_accuracy
    from ntk_info.models import get_model, init_params

    args = run.args
    fractions = _floats(args.fractions, "--fractions")
    scores = np.asarray(getattr(result, args.by) if args.by != "loo_residual" else
                        np.linalg.norm(np.asarray(result.loo_residuals).reshape(run.X.shape[0], -1), axis=1))
    blocks = [("full data", np.ones((1, run.X.shape[0])), [0.0])]
    for strategy in ("bottom", "top", "random"):
        blocks.append((strategy, keep_masks(scores, fractions, strategy, seed=args.seed), fractions))
    if args.iterative:
        score_fn = run.subset_scorer(args.by)
        blocks.append(("bottom-iterative", iterative_keep_masks(score_fn, run.X.shape[0], fractions,
                                                                progress=run.progress), fractions))
    masks = np.concatenate([b[1] for b in blocks])
    retrain_name = args.retrain_model or args.model
    kwargs = {"width": args.retrain_width} if retrain_name == "mlp" else {}
    model = get_model(retrain_name, run.ds.num_classes, **kwargs)
    params0 = init_params(model, run.X.shape[1:], seed=args.seed + 1)
    steps = args.retrain_steps or run.steps
    lr = args.lr if args.lr is not None else run.auto_lr(model, params0)
    with run.stages(f"retrain {masks.shape[0]} subsets"):
        acc = retrain_accuracy(model.apply_fn, params0, run.X, run.Y, masks, run.X_test, run.y_test, lr=lr,
                               steps=steps, weight_decay=run.weight_decay, progress=run.progress)
    rows, j = [], 0
    for strategy, block, fr in blocks:
        for q in fr:
            rows.append({"strategy": strategy, "fraction": float(q), "n_kept": int(masks[j].sum()),
                         "accuracy": float(acc[j])})
            j += 1
    _write(run, "summarize.csv", rows)
    return {"summarize_by": args.by, "retrain_model": retrain_name, "retrain_width": args.retrain_width,
            "retrain_steps": steps, "retrain_lr": lr, "accuracy_on": "test half of the held-out split"}


def _summarize_cmd(args, stages):
    run = Run(args, stages)
    result = run.score()
    _write(run, "scores.csv", run.sample_rows(result))
    run.save_inputs()
    return _finish(run, _summarize(run, result))


def _sources_cmd(args, stages):
    from ntk_info.apps.sources import group_summary

    def check(run):
        if run.ds.source is None and run.ds.group is None:
            raise CLIError(f"sources: dataset {args.data!r} has no source or group per sample; give an .npz with "
                           "a 'source'/'group' array or a .csv with --source-column/--group-column")

    run = Run(args, stages, check=check)
    result = run.score()
    _write(run, "scores.csv", run.sample_rows(result))
    rows = []
    for by, values in (("source", run.ds.source), ("group", run.ds.group)):
        if values is not None:
            rows += [dict(by=by, **r) for r in group_summary(result.fsi, values, score_name="fsi")]
    _write(run, "sources.csv", rows)
    run.save_inputs()
    print(_format_table(rows, ("by", "group", "count", "mean", "median")))
    return _finish(run)


def _compare_cmd(args, stages):
    import ntk_info
    from ntk_info.training import targets

    run = Run(args, stages)
    with stages("compare with brute force"):
        table = ntk_info.compare(run.model.apply_fn, run.params0, run.X, run.Y, run.X_val,
                                 targets(run.y_val, run.ds.num_classes), lr=run.lr, steps=run.steps,
                                 weight_decay=run.weight_decay, subset_size=args.subset_size,
                                 coords_per_layer=args.coords_per_layer, seed=args.seed, progress=run.progress,
                                 **({"methods": tuple(args.compare_methods.split(","))} if args.compare_methods else {}))
    rows = []
    for r in table.rows:
        row = {"method": r.method, "seconds": float(r.seconds)}
        for kind, values in (("pearson", r.pearson), ("spearman", r.spearman)):
            for measure, value in values.items():
                row[f"{kind}_{measure}"] = "" if value is None else float(value)
        rows.append(row)
    rows.append({"method": "brute force (retraining)", "seconds": float(table.brute_seconds)})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k, "") for k in keys} for r in rows]
    _write(run, "compare.csv", rows)
    print(_format_table(rows, tuple(keys)))
    return _finish(run, {"subset_size": args.subset_size, "compare": table.settings})


def _report_cmd(args, stages):
    from ntk_info.report import build_report

    with stages("report"):
        path = build_report(args.results)
    print(f"report: {os.path.abspath(path)}")
    return 0


def _demo_cmd(args, stages):
    run = Run(args, stages)
    result, extra = _detect(run, list(DETECT_METHODS))
    extra.update(_summarize(run, result))
    return _finish(run, extra)


# ----------------------------------------------------------------------------- parser


def _common(parser, *, data="digits", n_train=None, noise=0.0, width=256, steps=1000, out=None):
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=data, help=f"bundled name (digits, breast-cancer, iris, wine) or a path to "
                   f".npz/.csv/idx (default: {data})")
    g.add_argument("--labels", help="idx1-ubyte label file for idx images (default: the sibling file)")
    g.add_argument("--label-column", default="label", help="CSV: label column (default: label)")
    g.add_argument("--source-column", help="CSV: column naming each sample's source")
    g.add_argument("--group-column", help="CSV: column naming each sample's group (e.g. subclass)")
    g.add_argument("--classes", help="keep only these labels, comma-separated (e.g. 4,9)")
    g.add_argument("--n-train", type=int, default=n_train, help=f"training samples to keep (default: {n_train or 'all'})")
    g.add_argument("--val-fraction", type=float, default=0.3,
                   help="held-out fraction when the data has no validation split; half for F-SI, half for test "
                        "accuracy (default: 0.3)")
    g.add_argument("--noise", type=float, default=noise, help=f"uniform label-noise rate in [0, 1) (default: {noise})")
    g = parser.add_argument_group("model and training")
    g.add_argument("--model", default="mlp", help="mlp, cnn, resnet or package.module:factory (default: mlp)")
    g.add_argument("--width", type=int, default=width, help=f"MLP hidden width (default: {width})")
    g.add_argument("--lr", type=float, help="learning rate η of full-batch GD on the sum loss "
                   "(default: 1/λ_max of the NTK at init)")
    g.add_argument("--steps", type=int, default=steps, help=f"GD steps t (default: {steps})")
    g.add_argument("--weight-decay", type=float, default=0.0, help="λ, decay toward the init (default: 0)")
    g.add_argument("--coords-per-layer", type=int, default=2000,
                   help="random Jacobian coordinates kept per layer for the kernel (default: 2000)")
    g.add_argument("--projection", default="countsketch",
                   choices=("countsketch", "subsample", "gaussian", "rademacher"),
                   help="per-layer projection of the Jacobian: countsketch (default, most accurate per "
                        "coordinate), subsample (the SI paper's), gaussian/rademacher (dense, slower)")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, noise, init and projections (default: 0)")
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=out, required=out is None, help="output directory" +
                   (f" (default: {out})" if out else ""))
    g.add_argument("--force", action="store_true", help="overwrite results in an existing --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _summarize_options(parser):
    g = parser.add_argument_group("summarization")
    g.add_argument("--fractions", default="0.1,0.3,0.5,0.7,0.9", help="fractions removed (default: 0.1,...,0.9)")
    g.add_argument("--iterative", action="store_true", help="also remove 5%% at a time with recomputed scores")
    g.add_argument("--by", default="fsi", choices=("fsi", "si", "loo_residual"), help="score to rank by (default: fsi)")
    g.add_argument("--retrain-model", help="network retrained on the kept samples (default: --model)")
    g.add_argument("--retrain-width", type=int, default=64, help="MLP width of the retrained network (default: 64)")
    g.add_argument("--retrain-steps", type=int, help="GD steps of retraining (default: --steps)")


def _detect_options(parser):
    g = parser.add_argument_group("detection")
    g.add_argument("--methods", default=",".join(DETECT_METHODS), help=f"detectors (default: all: "
                   f"{','.join(DETECT_METHODS)})")
    g.add_argument("--adversarial", type=float, default=0.0,
                   help="instead of label noise: replace this fraction by successful FGSM examples")
    g.add_argument("--eps", type=float, default=0.01, help="FGSM step ε on [0,1]-scaled inputs (default: 0.01)")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="ntk-info", description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter)
    from ntk_info import __version__

    parser.add_argument("--version", action="version", version=f"ntk-info {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="the whole story on digits with 10%% label noise (scores, detection, "
                       "summarization, report)", formatter_class=formatter,
                       description="Digits (10 classes), 1000 training samples, 10%% flipped labels, MLP: F-SI/SI and "
                                   "exact LOO scores, detection of the flipped labels (vs. influence, MPE, training "
                                   "loss, cleanlab), summarization with retraining, and report.html.")
    _common(p, n_train=1000, noise=0.1, width=256, steps=1000, out="results/demo")
    _summarize_options(p)
    p.set_defaults(func=_demo_cmd, methods=",".join(DETECT_METHODS), adversarial=0.0, eps=0.01, iterative=True)

    p = sub.add_parser("score", help="F-SI, SI and exact LOO residual of every training sample -> scores.csv",
                       formatter_class=formatter)
    _common(p)
    p.set_defaults(func=_score_cmd)

    p = sub.add_parser("detect", help="find mislabeled (--noise) or adversarial (--adversarial) samples",
                       formatter_class=formatter)
    _common(p, noise=0.1)
    _detect_options(p)
    p.set_defaults(func=_detect_cmd)

    p = sub.add_parser("summarize", help="remove the least informative samples and retrain -> summarize.csv",
                       formatter_class=formatter)
    _common(p)
    _summarize_options(p)
    p.set_defaults(func=_summarize_cmd)

    p = sub.add_parser("sources", help="F-SI per data source / group -> sources.csv", formatter_class=formatter)
    _common(p)
    p.set_defaults(func=_sources_cmd)

    p = sub.add_parser("compare", help="every estimate vs. brute-force retraining on a subset -> compare.csv",
                       formatter_class=formatter)
    _common(p)
    p.add_argument("--subset-size", type=int, default=20, help="samples retrained without (default: 20)")
    p.add_argument("--compare-methods", help="comma-separated subset of linearization, influence_exact, "
                   "influence_lissa, mpe (default: all)")
    p.set_defaults(func=_compare_cmd)

    p = sub.add_parser("report", help="re-render report.html from a results directory", formatter_class=formatter)
    p.add_argument("results", help="a directory written by another subcommand")
    p.set_defaults(func=_report_cmd, no_progress=True)
    return parser


def main(argv=None) -> int:
    """Entry point of ``ntk-info``; returns the exit status (2 on a user error, printed as one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stages = Stages()
    try:
        if args.command != "report":
            _prepare_out(args.out, args.force)
            _quiet_imports()
        return args.func(args, stages)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"ntk-info: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
