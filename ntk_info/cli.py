"""``ntk-info``: score every training sample, find bad ones, summarize a dataset, and report.

The command line only parses, calls and prints: every numerical decision (learning rate, kernel,
damping, scores) lives in ``ntk_info.apps.pipeline``. Heavy modules (JAX) are imported inside the
subcommands, so ``ntk-info --help`` stays fast.

Order of a run: every argument and the data are validated first; then the run writes into a fresh
temporary folder next to ``--out`` (``.<name>.ntk-info-partial-*``) and moves its files into ``--out``
only when it has finished, listing them in ``--out/manifest.json``. ``--force`` replaces only files a
previous run listed there; anything else in ``--out`` is left alone. User errors print one line
``ntk-info: error: ...`` and exit with status 2; Ctrl-C prints one line and exits with 130.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time

from ntk_info.report import INCOMPLETE_MARKER, MANIFEST

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = ["main", "build_parser", "CLIError", "MANIFEST"]

DESCRIPTION = """\
Unique information of every training sample (SI, F-SI), computed in closed form on the
linearized network: how much the weights / the predictions would change without the sample.

Start here:   ntk-info demo --out results/demo
  (digits, 10 classes, 1000 training samples, 10% of the labels flipped: scores, detection of the
  flipped labels against cleanlab, cleaning what is flagged, summarization of the cleaned data, and an
  HTML report; ~5-10 min on 2 cores)

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

Results: scores.csv (one row per training sample: row = its 0-based row in your data, label as you
wrote it, label_code, scores), split.csv (which rows were train / validation / test), detection.csv,
summarize.csv, sources.csv, compare.csv, settings.json, report.html, figures/*.png, and
manifest.json (the files this run wrote) in --out.
"""

PARTIAL = ".ntk-info-partial-"
# files and folders a run may write (checked against the user's own files before any work)
RESULT_NAMES = ("scores.csv", "split.csv", "detection.csv", "clean.csv", "summarize.csv", "sources.csv", "compare.csv",
                "settings.json", "inputs.npz", "report.html", "figures", MANIFEST)
DETECT_METHODS = ("fsi", "si", "loo_residual", "loo_margin", "loo_prob", "crossfit", "pooled", "influence",
                  "mpe", "train_loss", "cleanlab")


class CLIError(Exception):
    """A user error: printed as one line ``ntk-info: error: ...``, exit status 2."""


class _Terminated(Exception):
    """SIGTERM, turned into an exception so the partial results are removed."""


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
    """Silence absl/JAX log noise and turn on float64 before the first JAX computation."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    with contextlib.suppress(ImportError):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    import jax

    jax.config.update("jax_enable_x64", True)


_OPTION_NAMES = {}  # library argument name -> CLI option, filled by build_parser


def _user_error(err: Exception) -> CLIError:
    """A library ValueError as a CLI error; a leading 'name:' that is a CLI option becomes '--name:'."""
    text = str(err)
    match = re.match(r"(\w+): ", text)
    if match and match.group(1) in _OPTION_NAMES:
        text = _OPTION_NAMES[match.group(1)] + text[len(match.group(1)):]
    return CLIError(text)


def _floats(text, name, *, low=0.0, high=1.0):
    """Comma-separated numbers, each in the open interval (low, high)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not low < v < high for v in values):
        raise CLIError(f"{name}: expected numbers in ({low:g}, {high:g}), got {text!r}")
    return values


def _check_int(value, name, minimum):
    if value is not None and value < minimum:
        raise CLIError(f"{name}: expected an integer >= {minimum}, got {value}")


def _check_fraction(value, name, *, allow_zero):
    import math

    if not (math.isfinite(value) and (0 < value < 1 or (allow_zero and value == 0))):
        interval = "0 (off) or a number in (0, 1)" if allow_zero else "a number in (0, 1)"
        raise CLIError(f"{name}: expected {interval}, got {value}")


# ----------------------------------------------------------------------------- the output folder


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(out):
    """{relative path: entry} of the files a previous run wrote into ``out`` ({} when there is no manifest)."""
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as handle:
            manifest = json.load(handle)
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError
        return files
    except (OSError, ValueError, KeyError, TypeError):
        raise CLIError(f"--out {out!r}: {MANIFEST} is unreadable, so which files ntk-info wrote is unknown; "
                       "choose another --out or move that folder away") from None


def write_manifest(folder, files, command):
    """Write ``folder/manifest.json``: every file's size and SHA-256 (relative paths), last of a run."""
    entries = {}
    for rel in sorted(files):
        path = os.path.join(folder, rel)
        entries[rel] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    from ntk_info import __version__

    with open(os.path.join(folder, MANIFEST), "w") as handle:
        json.dump({"tool": "ntk-info", "version": __version__, "command": command, "complete": True,
                   "files": entries}, handle, indent=1)


class Output:
    """The results of one run: written into a fresh folder next to ``out``, moved into ``out`` by :meth:`commit`.

    Validates ``out`` when created (before any work): a path, not a file, no file in its parents,
    writable, empty or ``force``; no file of the user's own (not in a previous manifest) where this
    run writes.
    """

    def __init__(self, out, force, command):
        self.tmp, self.state = None, "validating"
        if not out or not out.strip():
            raise CLIError("--out: expected a directory path, got an empty string")
        self.out, self.command = os.path.abspath(out), command
        parent = os.path.dirname(self.out)
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise CLIError(f"--out {out!r} is a file, expected a directory")
        probe = parent
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise CLIError(f"--out {out!r}: {probe!r} is a file, so no folder can be created below it")
        self.old = {}
        if os.path.isdir(self.out) and os.listdir(self.out):
            if not force:
                raise CLIError(f"output directory {out!r} exists and has files; pass --force to overwrite the "
                               "results of an earlier run (files ntk-info did not write are kept)")
            self.old = _read_manifest(self.out)
            for name in RESULT_NAMES:
                path = os.path.join(self.out, name)
                if name == "figures" and os.path.exists(path) and not os.path.isdir(path):
                    raise CLIError(f"--out {out!r}: {path!r} is a file of yours where ntk-info writes its figures "
                                   "folder; move it away or choose another --out")
                if name != "figures" and os.path.lexists(path) and name not in self.old and name != MANIFEST:
                    raise CLIError(f"--out {out!r}: {path!r} was not written by ntk-info (not in {MANIFEST}); "
                                   "move it away or choose another --out")
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}{PARTIAL}", dir=parent)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp's 0o700 would become --out's mode
        except OSError as err:
            raise CLIError(f"--out {out!r}: cannot create a folder in {parent!r} ({err.strerror or err})") from None
        self.state = "writing"
        with open(os.path.join(self.tmp, INCOMPLETE_MARKER), "w") as handle:
            handle.write(f"ntk-info {command}: this folder holds the results of a run that has not finished (or was "
                         f"interrupted); finished results are moved to {self.out}\n")

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write_csv(self, name, rows):
        from ntk_info.report import write_csv

        write_csv(self.path(name), rows)

    def _files(self):
        found = []
        for root, _, files in os.walk(self.tmp):
            found += [os.path.relpath(os.path.join(root, f), self.tmp) for f in files]
        return sorted(f for f in found if f != INCOMPLETE_MARKER)

    def commit(self):
        """Move the finished results into ``out`` (SIGINT/SIGTERM held off meanwhile); return ``out``."""
        files = self._files()
        conflicts = [f for f in files if os.path.lexists(os.path.join(self.out, f)) and f not in self.old
                     and f != MANIFEST]
        if conflicts:
            self.state = "kept"
            raise CLIError(f"--out {self.out!r}: {conflicts[0]!r} exists and was not written by ntk-info; the finished "
                           f"results are in {self.tmp!r}")
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        self.state = "committed"
        try:
            os.remove(os.path.join(self.tmp, INCOMPLETE_MARKER))
            write_manifest(self.tmp, files, self.command)
            if not os.path.isdir(self.out) or not os.listdir(self.out):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(self.out)
                os.rename(self.tmp, self.out)
                return self.out
            # replace an earlier run's files: the manifest goes first, so a crash here leaves a folder
            # that `ntk-info report` recognizes as incomplete (no manifest)
            with contextlib.suppress(FileNotFoundError):  # none when --out held only the user's files
                os.remove(os.path.join(self.out, MANIFEST))
            for rel in self.old:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.remove(os.path.join(self.out, rel))
            for rel in files + [MANIFEST]:
                dest = os.path.join(self.out, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(os.path.join(self.tmp, rel), dest)
            shutil.rmtree(self.tmp)
            return self.out
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def discard(self):
        """Remove the temporary folder unless its results were committed or kept for the user."""
        if self.tmp is not None and self.state == "writing":
            shutil.rmtree(self.tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- configuration


def _config(args):
    """The PipelineConfig of the parsed arguments (validated)."""
    from ntk_info.apps.pipeline import ConfigError, PipelineConfig

    classes = None
    if args.classes is not None:
        classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    config = PipelineConfig(
        data=args.data, labels=args.labels, label_column=args.label_column, source_column=args.source_column,
        group_column=args.group_column, delimiter=args.delimiter, classes=classes, n_train=args.n_train,
        val_fraction=args.val_fraction,
        noise=args.noise, model=args.model, width=args.width, lr=args.lr, steps=args.steps,
        weight_decay=args.weight_decay, coords_per_layer=args.coords_per_layer, projection=args.projection,
        kernel=args.kernel, allow_unstable_lr=args.allow_unstable_lr, seed=args.seed, init=args.init,
        pretrain_classes=None if args.pretrain_classes is None else
        tuple(c.strip() for c in args.pretrain_classes.split(",") if c.strip()),
        pretrain_steps=args.pretrain_steps, linearize=args.linearize, segments=args.segments,
        trust_samples=args.trust_samples)
    try:
        return config.validate()
    except ConfigError as err:
        raise _option_error(err) from None


def _option_error(err):
    """A PipelineConfig field's error as the CLI option's."""
    return CLIError(f"--{err.field.replace('_', '-')}: {err.message}")


def _check_data_path(path):
    """--data names a bundled set or a readable file (not a directory)."""
    from ntk_info.data import DATASET_NAMES

    if path in DATASET_NAMES:
        return
    if os.path.isdir(path):
        raise CLIError(f"--data {path!r} is a directory; expected a bundled name ({', '.join(DATASET_NAMES)}) or "
                       "a .npz, .csv or idx file")
    if os.path.exists(path):
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as err:
            raise CLIError(f"--data {path!r}: cannot read the file ({err.strerror or err})") from None


class _Run:
    """One subcommand's validated inputs: config, data, output folder; then the pipeline (model, lr)."""

    def __init__(self, args, stages, check=None):
        """``check(run)`` validates command-specific needs against the loaded data (before any work)."""
        from ntk_info.apps.pipeline import ConfigError, check_model_input, load_data

        self.args, self.stages = args, stages
        self.config = _config(args)
        _check_data_path(args.data)
        _quiet_imports()
        try:
            with stages("load data"):
                self.data = load_data(self.config)
            check_model_input(self.config.model, self.data)
        except ConfigError as err:
            raise _option_error(err) from None
        except ValueError as err:  # unusable data (DegenerateData is one), named by the loaders
            raise _user_error(err) from None
        if check is not None:
            check(self)
        self.output = args.output = Output(args.out, args.force, args.command)

    def start(self):
        """Build the model and decide the learning rate (may refuse it); the pipeline does the work."""
        from ntk_info.apps.pipeline import ConfigError, DegenerateData, Pipeline, UnstableLearningRate

        try:
            self.pipe = Pipeline(self.config, self.data, stage=self.stages, progress=not self.args.no_progress)
        except ConfigError as err:
            raise _option_error(err) from None
        except (UnstableLearningRate, DegenerateData) as err:
            raise _user_error(err) from None
        return self.pipe

    def sample_rows(self, result, extra=None):
        """scores.csv rows: index (position in this run), row (in the user's data), labels, scores."""
        import numpy as np

        from ntk_info.apps.pipeline import base_scores

        d = self.data
        n = self.pipe.X.shape[0]
        cols = {"index": np.arange(n), "row": d.rows_train, "label": d.label_text(d.labels), "label_code": d.labels}
        if d.is_noisy is not None:
            cols["true_label"] = d.label_text(d.true_labels)
            cols["is_noisy"] = d.is_noisy.astype(int)
        if d.dataset.source is not None:
            cols["source"] = d.dataset.source
        if d.dataset.group is not None:
            cols["group"] = d.dataset.group
        cols.update(base_scores(result))
        cols.update(extra or {})
        return [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in cols.items()} for i in range(n)]

    def write_common(self, result, extra=None):
        """scores.csv, split.csv and (for images) inputs.npz."""
        import numpy as np

        from ntk_info.apps.pipeline import split_rows

        self.output.write_csv("scores.csv", self.sample_rows(result, extra))
        self.output.write_csv("split.csv", split_rows(self.data))
        if self.data.dataset.image_shape is not None:
            np.savez_compressed(self.output.path("inputs.npz"), X=self.pipe.X,
                                image_shape=np.array(self.data.dataset.image_shape))

    def finish(self, extra_settings=None):
        """settings.json and the report into the temporary folder, then move everything into --out."""
        from ntk_info.report import build_report

        settings = dict(self.pipe.settings(), command=self.args.command, **(extra_settings or {}))
        with self.stages("report"):
            self._write_settings(settings)
            build_report(self.output.tmp, title=f"ntk_info: {self.args.command} on {self.args.data}")
        self._write_settings(settings)  # with the report stage's own time
        out = self.output.commit()
        for warning in settings.get("warnings", []):
            print(f"ntk-info: warning: {warning}", file=sys.stderr)
        if settings["kernel"] == "trace":
            print(f"ntk-info: note: scores use the {settings['kernel_meaning']} (kernel {settings['kernel_requested']}"
                  f"; --kernel full for the full NTK)", file=sys.stderr)
        print(self.stages.summary(), file=sys.stderr)
        if settings.get("trust"):
            print(_trust_line(settings["trust"]))
        print(f"report: {os.path.join(out, 'report.html')}")
        return 0

    def _write_settings(self, settings):
        with open(self.output.path("settings.json"), "w") as handle:
            json.dump(dict(settings, timings=self.stages.times), handle, indent=1, default=str)


def _trust_line(trust):
    """One stdout line: the verdict of ntk_info.trust and the figures behind it."""
    spot = trust.get("spot_check") or {}
    measure = spot.get(spot.get("ranked_by_measure", "predictions")) or {}
    ci = measure.get("pearson_interval")
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
    ranked_by = {"fsi": "F-SI", "si": "SI"}.get(spot.get("ranked_by"), "score")
    return (f"trust: {trust['verdict'].upper()} (spot check {ranked_by} Pearson "
            f"{fmt(measure.get('pearson'))}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            + f" on {spot.get('samples')} retrainings, linearization gap {fmt(trust.get('linearization_gap'))}, "
            f"stability margin {fmt(trust.get('stability_margin'))}); details at the top of the report")


# ----------------------------------------------------------------------------- subcommands


def _score_cmd(args, stages):
    run = _Run(args, stages)
    result = run.start().score()
    run.write_common(result)
    return run.finish()


def _detection_scores(run, result, methods):
    """(scores, columns, settings, loo): every requested detector's per-sample scores (higher = more suspicious);
    the scores.csv columns of the left-out predictions behind them and their settings, each computed once; and
    ``apps.detect.loo_detection_scores`` of ``result``."""
    from ntk_info.apps import detect
    from ntk_info.apps.pipeline import ConfigError, base_scores

    pipe, labels = run.pipe, run.data.labels
    out = base_scores(result, [m for m in methods if m in ("fsi", "si", "loo_residual")])
    loo = detect.loo_detection_scores(result, labels)  # the whole LOO prediction, always in scores.csv
    columns = {"loo_margin": loo["loo_margin"], "loo_prob_given": loo["loo_prob_given"],
               "suggested_label": run.data.label_text(loo["suggested_label"])}
    settings = {"loo_temperature": loo["loo_temperature"]}
    if "loo_margin" in methods:
        out["loo_margin"] = -loo["loo_margin"]
    if "loo_prob" in methods:
        out["loo_prob"] = -loo["loo_prob_given"]
    if {"crossfit", "pooled"} & set(methods):
        try:
            crossfit = pipe.crossfit()
        except ConfigError as err:
            raise _option_error(err) from None
        cross = detect.loo_output_scores(crossfit.loo_outputs, labels)
        columns.update(crossfit_log_prob_given=cross["loo_log_prob_given"],
                       crossfit_suggested_label=run.data.label_text(cross["suggested_label"]),
                       crossfit_fold=crossfit.fold)
        settings["crossfit"] = {**crossfit.settings, "loo_temperature": cross["loo_temperature"]}
        if "crossfit" in methods:
            out["crossfit"] = -cross["loo_log_prob_given"]
        if "pooled" in methods:
            at_trained, at_head = pipe.trained_points()
            trained, head = (detect.loo_detection_scores(r, labels)["loo_log_prob_given"]
                             for r in (at_trained, at_head))
            pooled = detect.pooled_log_prob([trained, head, cross["loo_log_prob_given"]])
            out["pooled"] = -pooled
            columns.update(trained_log_prob_given=trained, trained_head_log_prob_given=head,
                           pooled_log_prob_given=pooled)
            settings["pooled"] = {
                "rule": "mean of the LOO log-probabilities of the given label at the trained, trained-head and "
                        "cross-fitted points (whatever --linearize scores)",
                "weight_decay_trained": at_trained.settings["weight_decay"],
                "weight_decay_trained_head": at_head.settings["weight_decay"]}
    params = pipe.trained() if {"influence", "mpe", "train_loss"} & set(methods) else None
    if "train_loss" in methods:
        out["train_loss"] = detect.training_loss(pipe.model.apply_fn, params, pipe.X, pipe.Y)
    if {"influence", "mpe"} & set(methods):
        with run.stages("influence and MPE"):
            infl, mpe = detect.influence_and_mpe(pipe.model.apply_fn, params, pipe.X, pipe.Y,
                                                 weight_decay=pipe.config.weight_decay, damping=pipe.damping,
                                                 coords_per_layer=pipe.config.coords_per_layer, seed=pipe.config.seed)
        out.update({k: v for k, v in (("influence", infl), ("mpe", mpe)) if k in methods})
    if "cleanlab" in methods:
        with run.stages("cleanlab (5-fold MLP 256)"):
            out["cleanlab"] = detect.cleanlab_scores(pipe.X, run.data.labels, num_classes=run.data.num_classes,
                                                     seed=pipe.config.seed)
    return out, columns, settings, loo


def _parse_methods(text):
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DETECT_METHODS]
    if unknown or not methods:
        raise CLIError(f"--methods: unknown {unknown or methods}; valid: {','.join(DETECT_METHODS)}")
    return methods


def _detect(run, methods):
    """Score, then run every detector against the flipped labels or the adversarial inputs."""
    from ntk_info.apps import detect

    pipe = run.pipe
    extra_settings = {}
    in_memory = [m for m in methods if m in ("crossfit", "pooled")]
    if in_memory and pipe.kernel == "streamed":  # decided before any work: they keep features in memory
        if run.args.methods != ",".join(DETECT_METHODS):
            raise CLIError(f"--methods {','.join(in_memory)}: the cross-fitted and trained points keep their "
                           f"features in memory, which at {pipe.X.shape[0]} samples needs --kernel trace (or drop "
                           f"{' and '.join(in_memory)})")
        methods = [m for m in methods if m not in in_memory]
        print(f"ntk-info: note: {' and '.join(in_memory)} skipped: the streamed kernel ({pipe.X.shape[0]} samples) "
              "keeps no features in memory; pass --kernel trace to run them", file=sys.stderr)
    bad_name, is_bad = "is_noisy", run.data.is_noisy
    if run.args.adversarial:
        from ntk_info.data import fgsm

        with run.stages("FGSM attack"):
            adv = fgsm(pipe.model.apply_fn, pipe.trained(), pipe.X, run.data.labels, num_classes=run.data.num_classes,
                       eps=run.args.eps, fraction=run.args.adversarial, seed=pipe.config.seed)
        if adv.is_adversarial.sum() == 0:
            raise CLIError(f"--eps {run.args.eps}: no FGSM attack succeeded ({adv.attempted} tried); use a larger --eps")
        pipe.replace_inputs(adv.X)  # the detectors look at a network trained on the attacked set
        bad_name, is_bad = "is_adversarial", adv.is_adversarial
        extra_settings.update(fgsm_eps=adv.eps, fgsm_step=adv.step, fgsm_clip=adv.clip,
                              fgsm_success_rate=adv.success_rate, adversarial=int(adv.is_adversarial.sum()))
    result = pipe.score()
    scores, columns, settings, loo = _detection_scores(run, result, methods)
    rows = detect.detection_metrics(scores, is_bad)
    for r in rows:
        r["bad"] = bad_name
    print(f"detect ({bad_name}, {int(is_bad.sum())} of {len(is_bad)} samples):")
    print(_format_table(rows, ("method", "auroc", "ap", "found_top10", "found_top20")))
    extra = {k: v for k, v in scores.items() if k not in ("fsi", "si", "loo_residual", "loo_margin", "loo_prob",
                                                          "crossfit", "pooled")}
    extra.update(columns)
    extra_settings.update(settings)
    if run.args.clean != "none":
        extra_settings["clean"], run.cleaned = _clean(run, loo)
    if bad_name == "is_adversarial":
        extra["is_adversarial"] = is_bad.astype(int)
    run.write_common(result, extra)
    run.output.write_csv("detection.csv", rows)
    return result, extra_settings


def _clean(run, loo):
    """--clean: flag LOO margin < 0, remove or relabel, retrain before/after -> clean.csv; returns the summary."""
    import numpy as np

    from ntk_info.apps.clean import clean, clean_and_evaluate, flag

    pipe, d = run.pipe, run.data
    flagged, rule = flag(loo["loo_margin"])
    cleaned = clean(d.labels, flagged, action=run.args.clean, suggested=loo["suggested_label"], rule=rule)
    with run.stages(f"clean ({run.args.clean}) and retrain"):
        summary = clean_and_evaluate(pipe.model.apply_fn, pipe.params0, pipe.X, d.labels, cleaned, d.X_val, d.y_val,
                                     d.X_test, d.y_test, num_classes=d.num_classes,
                                     true_labels=d.true_labels if d.is_noisy is not None else None,
                                     train_options={"seed": pipe.config.seed})
    label_text, new_text = d.label_text(d.labels), d.label_text(cleaned.labels)
    rows = [{"index": int(i), "row": int(d.rows_train[i]), "label": label_text[i], "flagged": 1,
             "action": cleaned.action, "new_label": new_text[i] if cleaned.keep[i] else ""}
            for i in np.flatnonzero(cleaned.flagged)]
    run.output.write_csv("clean.csv", rows or [{"index": "", "row": "", "label": "", "flagged": 0,
                                                "action": cleaned.action, "new_label": ""}])
    planted = "" if "flag_precision" not in summary else (
        f" ({100 * summary['flag_precision']:.0f}% of them planted flips; wrong labels in the training set "
        f"{summary['wrong_labels_before']} -> {summary['wrong_labels_after']})")
    print(f"clean ({cleaned.action} where {rule}): {summary['n_flagged']} of {len(d.labels)} flagged{planted}; "
          f"{summary['n_kept']} kept; test accuracy {summary['accuracy_before']:.4f} -> "
          f"{summary['accuracy_after']:.4f} "
          "(network retrained with Adam)")
    return summary, cleaned


def _format_table(rows, keys):
    lines = ["  ".join(f"{k:>12}" for k in keys)]
    for r in rows:
        lines.append("  ".join(f"{r[k]:>12.4f}" if isinstance(r[k], float) else f"{r[k]:>12}" for k in keys))
    return "\n".join(lines)


def _detect_args(args):
    """--noise defaults to 0.1 only when --adversarial is not given; both at once is an error."""
    _check_fraction(args.adversarial, "--adversarial", allow_zero=True)
    import math

    if not (math.isfinite(args.eps) and args.eps > 0):
        raise CLIError(f"--eps: expected a finite number > 0 (a fraction of the data's range), got {args.eps}")
    if args.adversarial and args.noise:
        raise CLIError("--adversarial and --noise: choose one kind of bad sample to detect")
    if args.noise is None:
        args.noise = 0.0 if args.adversarial else 0.1
    if not args.adversarial and not args.noise:
        raise CLIError("detect: nothing to detect; pass --noise RATE (e.g. 0.1) or --adversarial FRACTION")


def _detect_cmd(args, stages):
    methods = _parse_methods(args.methods)
    _detect_args(args)
    run = _Run(args, stages)
    run.start()
    _, extra_settings = _detect(run, methods)
    return run.finish(extra_settings)


def _summarize_args(args):
    args.fraction_list = _floats(args.fractions, "--fractions")
    _check_int(args.retrain_width, "--retrain-width", 1)
    _check_int(args.retrain_steps, "--retrain-steps", 1)


def _summarize(run, result, pipe=None):
    """Removal masks for every strategy and fraction, retrained all at once; rows for summarize.csv.
    ``pipe``: the pipeline whose training set is summarized (default ``run.pipe``; the cleaned one after
    --clean)."""
    import numpy as np

    from ntk_info.apps.pipeline import ConfigError, base_scores
    from ntk_info.apps.summarize import iterative_keep_masks, keep_masks, retrain_accuracy

    args, pipe = run.args, pipe or run.pipe
    fractions = args.fraction_list
    n = pipe.X.shape[0]
    scores = base_scores(result, (args.by,))[args.by]
    blocks = [("full data", np.ones((1, n)), [0.0])]
    for strategy in ("bottom", "top", "random"):
        blocks.append((strategy, keep_masks(scores, fractions, strategy, seed=args.seed), fractions))
    if args.iterative:
        try:
            score_fn = pipe.rescorer(args.by)
        except ConfigError as err:
            raise _option_error(err) from None
        blocks.append(("bottom-iterative", iterative_keep_masks(score_fn, n, fractions, progress=pipe.progress),
                       fractions))
    masks = np.concatenate([b[1] for b in blocks])
    retrain_name = args.retrain_model or args.model
    with run.stages("estimate retraining lr"):
        try:
            model, params0, lr, warnings = pipe.retraining_setup(retrain_name, args.retrain_width)
        except ValueError as err:
            raise _user_error(err) from None
    steps = args.retrain_steps or pipe.config.steps
    with run.stages(f"retrain {masks.shape[0]} subsets"):
        acc = retrain_accuracy(model.apply_fn, params0, pipe.X, pipe.Y, masks, run.data.X_test, run.data.y_test,
                               lr=lr, steps=steps, weight_decay=pipe.config.weight_decay, progress=pipe.progress)
    rows, j = [], 0
    for strategy, block, fr in blocks:
        for q in fr:
            rows.append({"strategy": strategy, "fraction": float(q), "n_kept": int(masks[j].sum()),
                         "accuracy": float(acc[j])})
            j += 1
    run.output.write_csv("summarize.csv", rows)
    run.pipe.warnings.extend(warnings)
    print(f"summarize ({n} training samples{' after cleaning' if pipe is not run.pipe else ''}, removing by "
          f"{args.by}; test accuracy of the {retrain_name} retrained on what is kept):")
    columns = ("strategy", *[f"{100 * q:.0f}%" for q in [0.0, *fractions]])
    print(_format_table(_summary_wide(rows, fractions), columns))
    return {"summarize_by": args.by, "retrain_model": retrain_name, "retrain_width": args.retrain_width,
            "retrain_steps": steps, "retrain_lr": lr, "accuracy_on": "test half of the held-out split"}


def _summary_wide(rows, fractions):
    """summarize.csv rows as one row per strategy: the full data's accuracy under "0%", then one column per
    removed fraction."""
    full = [r["accuracy"] for r in rows if r["strategy"] == "full data"]
    table = {}
    for r in rows:
        if r["strategy"] != "full data":
            row = table.setdefault(r["strategy"], {"strategy": r["strategy"], "0%": full[0] if full else ""})
            row[f"{100 * r['fraction']:.0f}%"] = r["accuracy"]
    return [{"strategy": s, **{f"{100 * q:.0f}%": row.get(f"{100 * q:.0f}%", "") for q in [0.0, *fractions]}}
            for s, row in table.items()]


def _summarize_cmd(args, stages):
    _summarize_args(args)
    run = _Run(args, stages)
    result = run.start().score()
    run.write_common(result)
    return run.finish(_summarize(run, result))


def _sources_cmd(args, stages):
    """Per source (and group): the linearized model retrained exactly without it and on only it, next to
    per-sample score summaries (``ntk_info.apps.sources``); ``--retrain``: the real network beside it."""
    from ntk_info.apps.pipeline import base_scores
    from ntk_info.apps.sources import (SOURCE_COLUMNS, add_retrained_columns, format_table, network_source_table,
                                       retrained_source_accuracy)

    def check(run):
        if run.data.dataset.source is None and run.data.dataset.group is None:
            raise CLIError(f"sources: dataset {args.data!r} has no source or group per sample; give an .npz with "
                           "a 'source'/'group' array or a .csv with --source-column/--group-column")

    run = _Run(args, stages, check=check)
    pipe = run.start()
    result = pipe.score()
    run.write_common(result)
    d, c = run.data, pipe.config
    scores = base_scores(result, ("fsi", "loo_residual"))
    rows = []
    for by, groups in (("source", d.dataset.source), ("group", d.dataset.group)):
        if groups is None:
            continue
        with stages(f"leave-one-{by}-out (linearized, exact)"):
            part = network_source_table(pipe.model.apply_fn, pipe.params0, pipe.X, pipe.Y, d.labels, groups, d.X_val,
                                        d.y_val, d.X_test, d.y_test, lr=pipe.lr, steps=c.steps,
                                        weight_decay=c.weight_decay, coords_per_layer=c.coords_per_layer, seed=c.seed,
                                        projection=c.projection, kernel=pipe.kernel, scores=scores, by=by,
                                        progress=pipe.progress)
        if args.retrain:
            with stages(f"retrain the network without / with only each {by}"):
                part = add_retrained_columns(part, retrained_source_accuracy(
                    pipe.model.apply_fn, pipe.params0, pipe.X, pipe.Y, groups, d.X_val, d.y_val, lr=pipe.lr,
                    steps=c.steps, weight_decay=c.weight_decay, progress=pipe.progress))
        rows += part
    keys = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k, "") for k in keys} for r in rows]
    run.output.write_csv("sources.csv", rows)
    shown = SOURCE_COLUMNS[:5] + ("val_accuracy_without_retrained", "val_accuracy_only", "val_accuracy_only_retrained",
                                  "heldout_accuracy", "fsi_mean", "loo_residual_mean", "flagged_share")
    print(format_table(rows, shown))
    return run.finish({"sources": "linearized model retrained exactly without / on only each source "
                                  "(ntk_info.group_loo); flagged_share: share of the source among the top 10% "
                                  "LOO residuals", "sources_retrain": bool(args.retrain)})


def _compare_cmd(args, stages):
    import ntk_info
    from ntk_info.comparison import METHODS
    from ntk_info.training import targets

    methods = METHODS
    if args.compare_methods:
        methods = tuple(m.strip() for m in args.compare_methods.split(",") if m.strip())
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise CLIError(f"--compare-methods: unknown {unknown or list(methods)}; valid: {','.join(METHODS)}")

    def check(run):
        n = run.data.X.shape[0]
        if not 2 <= args.subset_size <= n:
            raise CLIError(f"--subset-size: expected an integer in [2, {n}] (the training samples), got "
                           f"{args.subset_size}")

    run = _Run(args, stages, check=check)
    pipe = run.start()
    with stages("compare with brute force"):
        table = ntk_info.compare(pipe.model.apply_fn, pipe.params0, pipe.X, pipe.Y, run.data.X_val,
                                 targets(run.data.y_val, run.data.num_classes), lr=pipe.lr, steps=pipe.config.steps,
                                 weight_decay=pipe.config.weight_decay, subset_size=args.subset_size,
                                 coords_per_layer=pipe.config.coords_per_layer, seed=pipe.config.seed,
                                 damping=pipe.damping, kernel=pipe.kernel, method=pipe.config.projection,
                                 progress=pipe.progress, methods=methods)
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
    run.output.write_csv("compare.csv", rows)
    print(_format_table(rows, tuple(keys)))
    return run.finish({"subset_size": args.subset_size, "compare": table.settings})


def _report_cmd(args, stages):
    from ntk_info.report import build_report, check_results

    folder = os.path.abspath(args.results)
    try:
        check_results(folder, require_manifest=True)
    except ValueError as err:
        raise CLIError(str(err)) from None
    manifest = _read_manifest(folder)
    figures = os.path.join(folder, "figures")
    before = set(os.listdir(figures)) if os.path.isdir(figures) else set()
    with stages("report"):
        path = build_report(folder)
    created = {os.path.join("figures", f) for f in set(os.listdir(figures)) - before} if os.path.isdir(figures) else set()
    files = {f for f in manifest if os.path.isfile(os.path.join(folder, f))} | created | {"report.html"}
    write_manifest(folder, files - {MANIFEST}, "report")
    print(f"report: {path}")
    return 0


def _demo_cmd(args, stages):
    """Detect the flipped labels, clean them (--clean), then summarize the cleaned training set."""
    _summarize_args(args)
    run = _Run(args, stages)
    run.start()
    result, extra = _detect(run, list(DETECT_METHODS))
    pipe = run.pipe
    if args.clean != "none":
        from ntk_info.apps.pipeline import ConfigError, UnstableLearningRate

        try:
            pipe = run.pipe.cleaned(run.cleaned)
        except ConfigError as err:
            raise _option_error(err) from None
        except UnstableLearningRate as err:
            raise _user_error(err) from None
        result = pipe.score()  # the cleaned set's scores (its stages add to the same names)
        run.pipe.warnings.extend(w for w in pipe.warnings if w not in run.pipe.warnings)
        verb = {"remove": "removed", "relabel": "relabelled"}[args.clean]
        extra["summarize_on"] = {"training_set": f"the {run.cleaned.n_flagged} flagged samples {verb}",
                                 "n_train": int(pipe.X.shape[0]),
                                 "lr": pipe.lr, "lambda_max_ntk_init": pipe.lambda_max,
                                 "wrong_labels": None if pipe.data.is_noisy is None else int(pipe.data.is_noisy.sum()),
                                 **({"linearize_weight_decay": pipe.linearize_settings["linearize_weight_decay"]}
                                    if pipe.linearize_settings else {})}
    extra.update(_summarize(run, result, pipe))
    return run.finish(extra)


# ----------------------------------------------------------------------------- parser


def _common(parser, *, data="digits", n_train=None, noise=0.0, width=256, steps=1000, out=None):
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=data, help=f"bundled name (digits, breast-cancer, iris, wine) or a path to "
                   f".npz/.csv/idx (default: {data})")
    g.add_argument("--labels", help="idx1-ubyte label file for idx images (default: the sibling file)")
    g.add_argument("--label-column", default="label", help="CSV: label column (default: label)")
    g.add_argument("--source-column", help="CSV: column naming each sample's source")
    g.add_argument("--group-column", help="CSV: column naming each sample's group (e.g. subclass)")
    g.add_argument("--delimiter", type=lambda text: "\t" if text in ("\\t", "tab") else text,
                   help="CSV: field delimiter (default: detected among , ; tab |; 'tab' or '\\t' for a tab)")
    g.add_argument("--classes", help="keep only these labels, comma-separated (e.g. 4,9)")
    g.add_argument("--n-train", type=int, default=n_train, help=f"training samples to keep (default: {n_train or 'all'})")
    g.add_argument("--val-fraction", type=float, default=0.3,
                   help="held-out fraction when the data has no validation split; half for F-SI, half for test "
                        "accuracy (default: 0.3)")
    g.add_argument("--noise", type=float, default=noise, help=f"uniform label-noise rate in [0, 1) (default: {noise})")
    g = parser.add_argument_group("model and training")
    g.add_argument("--model", default="mlp", help="mlp, cnn, resnet or package.module:factory (default: mlp)")
    g.add_argument("--width", type=int, default=width, help=f"MLP hidden width (default: {width})")
    g.add_argument("--lr", type=float, help="learning rate η of full-batch GD on the sum loss (default: "
                   "1/(λ_max + λ), λ_max of the NTK at init); refused at or above GD's limit 2/(λ_max + λ)")
    g.add_argument("--allow-unstable-lr", action="store_true",
                   help="run with an --lr at or above the stability limit anyway (settings and report warn)")
    g.add_argument("--steps", type=int, default=steps, help=f"GD steps t (default: {steps})")
    g.add_argument("--weight-decay", type=float, default=0.0, help="λ, decay toward the init (default: 0)")
    g.add_argument("--coords-per-layer", type=int, default=2000,
                   help="random Jacobian coordinates kept per layer for the kernel (default: 2000)")
    g.add_argument("--projection", default="countsketch",
                   choices=("countsketch", "subsample", "gaussian", "rademacher"),
                   help="per-layer projection of the Jacobian: countsketch (default, most accurate per "
                        "coordinate), subsample (the SI paper's; for the built-in models' Dense layers it reads "
                        "the sampled coordinates off per-sample factors instead of full Jacobians: the fast "
                        "choice for large n), gaussian/rademacher (dense, slower)")
    g.add_argument("--kernel", default="auto", choices=("auto", "full", "trace", "streamed"),
                   help="full: the (n·k)x(n·k) NTK; trace: the output-averaged n x n kernel shared by the k "
                        "outputs (faster, an approximation); streamed: the full NTK with features streamed in "
                        "batches, never stored (large n; with --projection subsample for the built-in models); "
                        "auto: streamed when n > 10000, else trace when n·k > 4000 (default: auto; "
                        "settings.json records which was used)")
    g.add_argument("--linearize", default="init", choices=("init", "trained", "trained-head"),
                   help="where the network is linearized: init (replay --steps GD steps from the initialization, "
                        "the SI paper's; for summarization and comparison with retraining), trained (at weights "
                        "trained with Adam and early stopping on the validation half, t = inf, λ by exact LOO) or "
                        "trained-head (the same body with a fresh last layer: for mislabeled samples, the only "
                        "point still detecting them once the network memorizes its training set; "
                        "experiments/bench_detect.py) (default: init)")
    g.add_argument("--segments", type=int, default=None, metavar="S",
                   help="linearize the real GD run at S checkpoints and carry the exact leave-one-out through "
                        "them (for networks whose kernel moves in training, e.g. CNNs from scratch; cost ≈ S "
                        "feature passes + one training run; default: linearize at the init)")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, noise, init and projections (default: 0)")
    g.add_argument("--trust-samples", type=int, default=12,
                   help="retrain the real network without this many samples (spread over the F-SI ranking) and "
                        "report whether the scores can be trusted; 0 skips it (default: 12)")
    g = parser.add_argument_group("where to linearize (w0; default: the random init)")
    g.add_argument("--init", help="start from these parameters: a .npz (ntk_info.save_params), Flax .msgpack or "
                   "Orbax checkpoint directory in the --model's layout (ntk_info.models.init_params)")
    g.add_argument("--pretrain-classes", help="pretrain on these other labels of --data (comma-separated, e.g. "
                   "0,1,2,3,5,6,7,8 with --classes 4,9), then score with a fresh head: the SI paper's "
                   "'pretrained' setting, where the linearization holds best")
    g.add_argument("--pretrain-steps", type=int, default=1000,
                   help="full-batch GD steps of pretraining at 1/λ_max of its NTK at init (default: 1000)")
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=out, required=out is None, help="output directory" +
                   (f" (default: {out})" if out else ""))
    g.add_argument("--force", action="store_true",
                   help="replace the results of an earlier run in --out (only files listed in its manifest.json)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _summarize_options(parser):
    g = parser.add_argument_group("summarization")
    g.add_argument("--fractions", default="0.1,0.3,0.5,0.7,0.9", help="fractions removed, each in (0, 1) "
                   "(default: 0.1,...,0.9)")
    g.add_argument("--iterative", action="store_true", help="also remove 5%% at a time with recomputed scores")
    g.add_argument("--by", default="fsi", choices=("fsi", "si", "loo_residual"), help="score to rank by (default: fsi)")
    g.add_argument("--retrain-model", help="network retrained on the kept samples (default: --model)")
    g.add_argument("--retrain-width", type=int, default=64, help="MLP width of the retrained network (default: 64)")
    g.add_argument("--retrain-steps", type=int, help="GD steps of retraining (default: --steps)")


def _detect_options(parser):
    g = parser.add_argument_group("detection")
    g.add_argument("--methods", default=",".join(DETECT_METHODS), help=f"detectors (default: all: "
                   f"{','.join(DETECT_METHODS)}). crossfit: the LOO probability of the given label on the network "
                   "linearized where it never saw the sample (5 networks trained with Adam, cross-entropy and early "
                   "stopping, each without one fold; ntk_info.crossfit); pooled: its LOO log-probability averaged with "
                   "those at the trained and trained-head points (at or above cleanlab on every data set of "
                   "experiments/bench_detect.py)")
    g.add_argument("--clean", default="none", choices=("none", "remove", "relabel"),
                   help="after detection: remove the samples whose LOO margin is negative (the network trained "
                        "without them predicts another class) or relabel them to that class, retrain, and report "
                        "test accuracy before/after -> clean.csv (default: none)")
    g.add_argument("--adversarial", type=float, default=0.0,
                   help="instead of label noise: replace this fraction by successful FGSM examples")
    g.add_argument("--eps", type=float, default=0.01, help="FGSM step ε as a fraction of the data's range "
                   "(ε on [0,1] images; default: 0.01); adversarial inputs stay inside the data's range")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="ntk-info", description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter)
    from ntk_info import __version__

    parser.add_argument("--version", action="version", version=f"ntk-info {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="the whole story on digits with 10%% label noise (scores, detection, "
                       "cleaning, summarization of the cleaned data, report)", formatter_class=formatter,
                       description="Digits (10 classes), 1000 training samples, 10%% flipped labels, MLP: F-SI/SI and "
                                   "exact LOO scores, detection of the flipped labels (vs. influence, MPE, training "
                                   "loss, cleanlab), cleaning of what detection flags (test accuracy before/after), "
                                   "summarization of the cleaned training set with retraining, and report.html.")
    _common(p, n_train=1000, noise=0.1, width=256, steps=1000, out="results/demo")
    _summarize_options(p)
    p.add_argument("--clean", default="remove", choices=("none", "remove", "relabel"),
                   help="between detection and summarization: remove the samples whose LOO margin is negative, or "
                        "relabel them to the LOO-predicted class, report test accuracy before/after, and summarize "
                        "the cleaned training set (default: remove)")
    p.set_defaults(func=_demo_cmd, methods=",".join(DETECT_METHODS), adversarial=0.0, eps=0.01, iterative=True)

    p = sub.add_parser("score", help="F-SI, SI and exact LOO residual of every training sample -> scores.csv",
                       formatter_class=formatter)
    _common(p)
    p.set_defaults(func=_score_cmd)

    p = sub.add_parser("detect", help="find mislabeled (--noise) or adversarial (--adversarial) samples",
                       formatter_class=formatter)
    _common(p, noise=None)
    p.set_defaults(func=_detect_cmd)
    for action in p._actions:
        if action.dest == "noise":
            action.help = "uniform label-noise rate in [0, 1) (default: 0.1, or 0 with --adversarial)"
    _detect_options(p)

    p = sub.add_parser("summarize", help="remove the least informative samples and retrain -> summarize.csv",
                       formatter_class=formatter)
    _common(p)
    _summarize_options(p)
    p.set_defaults(func=_summarize_cmd)

    p = sub.add_parser("sources", help="what each data source / group is worth: the model retrained without it "
                       "and with only it (exact on the linearized network) -> sources.csv", formatter_class=formatter)
    _common(p)
    p.add_argument("--retrain", action="store_true",
                   help="also retrain the real network without / with only each source (checks the linearization)")
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
    _OPTION_NAMES.update({a.dest: a.option_strings[0] for sp in sub.choices.values() for a in sp._actions
                          if a.option_strings and a.option_strings[0].startswith("--")})
    return parser


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv=None) -> int:
    """Entry point of ``ntk-info``; returns the exit status (2: user error, 130: Ctrl-C, 143: SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.output = None
    stages = Stages()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args, stages)
    except CLIError as err:
        print(f"ntk-info: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Terminated) as err:
        done = args.output is not None and args.output.state == "committed"
        where = "" if args.command == "report" else \
            f"; the results were saved in {args.out}" if done else f"; {args.out} was not changed"
        print(f"ntk-info: interrupted{where}", file=sys.stderr)
        return 130 if isinstance(err, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.output is not None:
            args.output.discard()


if __name__ == "__main__":
    sys.exit(main())
