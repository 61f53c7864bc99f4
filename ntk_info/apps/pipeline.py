"""The ``ntk-info`` pipeline as library code: data → model → learning rate → scores, every decision here.

The command line (``ntk_info.cli``) parses its arguments into a frozen :class:`PipelineConfig`,
calls :func:`load_data` and :class:`Pipeline`, and prints. The numerical decisions, each tested once:

- learning rate η: ``config.lr``, or 1/(λ_max + λ) with λ_max the largest eigenvalue of the NTK at
  init on the training inputs (``ntk_info.features.ntk_lambda_max``, the sum loss). Full-batch GD —
  how the network is trained and what the scores assume — diverges for η ≥ 2/(λ_max + λ)
  (``ntk_info.dynamics.max_stable_lr``): such an η is refused (:class:`UnstableLearningRate`) unless
  ``allow_unstable_lr``, and then carried as a warning in the settings;
- kernel: ``ntk_info.scorer.kernel_for`` (the full (n·k)² NTK, or the output-averaged "trace" kernel
  shared by the k outputs when n·k > ``TRACE_ROWS_THRESHOLD``); the settings record which;
- influence/MPE damping (:func:`influence_damping`): regularizer δ = λ when λ > 0, else 1/(η t);
- validation split: even positions of the held-out split for F-SI, odd positions for test accuracy;
  ``rows_*`` map every sample back to its row in the user's data (:func:`split_rows`);
- where to linearize, w0: the model's random init (``seed``), the user's checkpoint (``init``, read by
  ``ntk_info.load_params`` into the zoo model's layout), or pretrained on other classes of the same data
  with a fresh head (``pretrain_classes``: ``pretrain_steps`` full-batch GD steps at η = 1/λ_max of the
  pretraining model's NTK at init, then ``ntk_info.training.replace_head``; SI paper Table 1).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os

import numpy as np

__all__ = ["PipelineConfig", "ConfigError", "UnstableLearningRate", "DegenerateData", "PipelineData", "Pipeline",
           "load_data", "choose_lr", "check_lr_stability", "influence_damping", "loo_residual_norms", "base_scores",
           "split_rows", "check_model_input", "clean_training_set", "IMAGE_MODELS", "PIPELINE_LINEARIZATIONS"]

IMAGE_MODELS = ("cnn", "resnet")
# where the scores linearize (ntk_info.linearize): "init" replays GD from the initialization (the SI paper's
# setting, for summarization); "trained" / "trained-head" linearize at Adam-trained weights (with the last
# layer re-initialized for "trained-head"), t = ∞ with λ chosen by exact LOO (for detection)
PIPELINE_LINEARIZATIONS = ("init", "trained", "trained-head")


class ConfigError(ValueError):
    """A setting outside its valid range; ``field`` names the :class:`PipelineConfig` field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class UnstableLearningRate(ValueError):
    """η ≥ 2/(λ_max + λ): full-batch GD diverges, and so would the scores' closed form."""


class DegenerateData(ValueError):
    """Inputs on which the NTK is degenerate (constant inputs, values that overflow)."""


def _integer(value, field, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(field, f"expected an integer >= {minimum}, got {value!r}")


def _number(value, field, *, low, high=math.inf, low_open=False, high_open=True):
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(field, f"expected a finite number in {interval}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Every setting of one run: data, model, training, projection, kernel, seed.

    Training: ``steps`` full-batch GD steps of size ``lr`` (None: 1/(λ_max + λ)) on the sum loss
    Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||², λ = ``weight_decay``. Scores: ``coords_per_layer``
    Jacobian coordinates per layer with ``projection``, ``kernel`` "auto" / "full" / "trace" / "streamed";
    ``segments`` S: linearize the real training run at S checkpoints (``ntk_info.segments``) instead of
    at the init (None).
    Evidence (``ntk_info.trust``): the real network retrained without ``trust_samples`` samples (0 skips it).
    """

    data: str = "digits"
    labels: str | None = None
    label_column: str = "label"
    source_column: str | None = None
    group_column: str | None = None
    delimiter: str | None = None
    classes: tuple | None = None
    n_train: int | None = None
    val_fraction: float = 0.3
    noise: float = 0.0
    model: str = "mlp"
    width: int = 256
    lr: float | None = None
    steps: int = 1000
    weight_decay: float = 0.0
    coords_per_layer: int = 2000
    projection: str = "countsketch"
    kernel: str = "auto"
    segments: int | None = None
    allow_unstable_lr: bool = False
    seed: int = 0
    init: str | None = None
    pretrain_classes: tuple | None = None
    pretrain_steps: int = 1000
    linearize: str = "init"
    trust_samples: int = 12

    def validate(self) -> "PipelineConfig":
        """Raise :class:`ConfigError` naming the first invalid field; return self."""
        from ntk_info.features import METHODS
        from ntk_info.scorer import KERNELS

        if not isinstance(self.data, str) or not self.data.strip():
            raise ConfigError("data", f"expected a dataset name or a file path, got {self.data!r}")
        if self.delimiter is not None and not (isinstance(self.delimiter, str) and len(self.delimiter) == 1):
            raise ConfigError("delimiter", f"expected one character (e.g. ';' or a tab), got {self.delimiter!r}")
        if self.classes is not None and len(set(self.classes)) < 2:
            raise ConfigError("classes", f"expected at least two distinct classes, got {list(self.classes)}")
        if self.n_train is not None:
            _integer(self.n_train, "n_train", 2)
        _number(self.val_fraction, "val_fraction", low=0, low_open=True, high=1)
        _number(self.noise, "noise", low=0, high=1)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", f"expected a model name or package.module:factory, got {self.model!r}")
        _integer(self.width, "width", 1)
        if self.lr is not None:
            _number(self.lr, "lr", low=0, low_open=True)
        _integer(self.steps, "steps", 1)
        _number(self.weight_decay, "weight_decay", low=0)
        _integer(self.coords_per_layer, "coords_per_layer", 1)
        if self.projection not in METHODS:
            raise ConfigError("projection", f"expected one of {', '.join(METHODS)}, got {self.projection!r}")
        if self.kernel not in KERNELS:
            raise ConfigError("kernel", f"expected one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.segments is not None:
            _integer(self.segments, "segments", 1)
            if self.segments > self.steps:
                raise ConfigError("segments", f"expected at most steps = {self.steps} segments, got {self.segments}")
        _integer(self.seed, "seed", 0)
        if self.linearize not in PIPELINE_LINEARIZATIONS:
            raise ConfigError("linearize", f"expected one of {', '.join(PIPELINE_LINEARIZATIONS)}, got "
                                           f"{self.linearize!r}")
        _integer(self.trust_samples, "trust_samples", 0)
        if self.seed >= 2 ** 32:
            raise ConfigError("seed", f"expected an integer < 2**32, got {self.seed}")
        if self.init is not None and not os.path.exists(self.init):
            raise ConfigError("init", f"no such checkpoint file or directory: {self.init!r} (.npz, .msgpack or an "
                                      "Orbax checkpoint directory)")
        if self.pretrain_classes is not None:
            if self.init is not None:
                raise ConfigError("pretrain_classes", "pretraining starts from the random init; drop --init, or "
                                                      "pretrain beforehand and pass the result as --init")
            if len(set(self.pretrain_classes)) < 2:
                raise ConfigError("pretrain_classes", f"expected at least two distinct classes, got "
                                                      f"{list(self.pretrain_classes)}")
            if self.classes is None:
                raise ConfigError("pretrain_classes", "the task must be other classes: pass --classes too (e.g. "
                                                      "--classes 4,9 --pretrain-classes 0,1,2,3,5,6,7,8)")
            overlap = sorted({str(c) for c in self.pretrain_classes} & {str(c) for c in self.classes})
            if overlap:
                raise ConfigError("pretrain_classes", f"classes {overlap} are also task classes (--classes); "
                                                      "pretrain on other classes only")
            _integer(self.pretrain_steps, "pretrain_steps", 1)
        return self


@dataclasses.dataclass(frozen=True)
class PipelineData:
    """The loaded data after label noise, with the held-out split cut into validation and test halves.

    ``labels`` are the integer codes used for training (with noise), ``true_labels`` the clean ones;
    ``rows_train`` / ``rows_val`` / ``rows_test`` are rows of the user's data (``dataset.val_array``
    names the array the held-out rows index).
    """

    dataset: object
    labels: np.ndarray
    is_noisy: np.ndarray | None
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    rows_val: np.ndarray
    rows_test: np.ndarray

    @property
    def X(self) -> np.ndarray:
        return self.dataset.X

    @property
    def true_labels(self) -> np.ndarray:
        return self.dataset.y

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def rows_train(self) -> np.ndarray:
        return self.dataset.rows

    def label_text(self, codes) -> np.ndarray:
        """Labels as the user wrote them, for integer codes."""
        return np.asarray(self.dataset.label_values, dtype=object)[np.asarray(codes)]


def _parse_classes(classes):
    return None if classes is None else [int(c) if str(c).strip().lstrip("-").isdigit() else str(c).strip()
                                         for c in classes]


def load_data(config: PipelineConfig) -> PipelineData:
    """Load ``config.data`` (``ntk_info.data.load_dataset``), add label noise, split validation/test.

    Raises ValueError for unusable data (naming the file or array), :class:`ConfigError` for a noise
    rate that flips no sample, :class:`DegenerateData` when every input feature is constant.
    """
    from ntk_info import data as data_mod

    config.validate()
    ds = data_mod.load_dataset(config.data, labels=config.labels, val_fraction=config.val_fraction, seed=config.seed,
                               n_train=config.n_train, classes=_parse_classes(config.classes),
                               label_column=config.label_column, source_column=config.source_column,
                               group_column=config.group_column, delimiter=config.delimiter)
    n = ds.X.shape[0]
    if np.ptp(ds.X.reshape(n, -1), axis=0).max() == 0:
        raise DegenerateData(f"data {config.data!r}: every input feature is constant across the {n} training samples "
                             "(after scaling); the NTK cannot tell the samples apart. Check the file's feature "
                             "columns")
    if ds.X_val.shape[0] < 2:
        raise DegenerateData(f"data {config.data!r}: the held-out split has {ds.X_val.shape[0]} sample(s); F-SI "
                             "and test accuracy need at least 2 (raise --val-fraction or add X_val)")
    labels, is_noisy = ds.y, None
    if config.noise:
        flips = int(round(config.noise * n))
        if flips == 0:
            raise ConfigError("noise", f"{config.noise} flips no sample of the {n} training samples (round(rate·n) = "
                                       f"0); use a rate >= {0.5 / n:.3g}, or 0 for no noise")
        labels, is_noisy, _ = data_mod.add_label_noise(ds.y, config.noise, ds.num_classes, seed=config.seed)
    rows_val = ds.rows_val if ds.rows_val is not None else np.arange(ds.X_val.shape[0])
    return PipelineData(ds, labels, is_noisy, ds.X_val[::2], ds.y_val[::2], ds.X_val[1::2], ds.y_val[1::2],
                        rows_val[::2], rows_val[1::2])


def clean_training_set(data: PipelineData, cleaned, X=None) -> PipelineData:
    """The training set after ``ntk_info.apps.clean.clean``: the kept samples (``cleaned.keep``) with their
    cleaned labels (``cleaned.labels``); the held-out split is unchanged. ``X``: the training inputs actually
    used (e.g. with adversarial examples; default ``data.X``). With planted noise, ``is_noisy`` becomes
    "label after cleaning != true label" (a relabel to a wrong class stays noisy, a fixed flip does not).
    Per-sample metadata (rows, source, group) follows the kept samples."""
    X = data.X if X is None else np.asarray(X)
    keep = np.asarray(cleaned.keep, dtype=bool)
    labels = np.asarray(cleaned.labels)
    if keep.shape != (X.shape[0],) or labels.shape != (X.shape[0],):
        raise ValueError(f"cleaned: expected keep and labels of shape ({X.shape[0]},) (one per training sample), "
                         f"got {keep.shape} and {labels.shape}")
    if not keep.any():
        raise ValueError("cleaned: no sample kept; nothing left to train on")
    ds = data.dataset
    pick = lambda a: None if a is None else np.asarray(a)[keep]  # noqa: E731
    rows = ds.rows if ds.rows is not None else np.arange(X.shape[0])
    dataset = dataclasses.replace(ds, X=X[keep], y=np.asarray(ds.y)[keep], source=pick(ds.source),
                                  group=pick(ds.group), rows=np.asarray(rows)[keep])
    is_noisy = None if data.is_noisy is None else labels[keep] != np.asarray(ds.y)[keep]
    return dataclasses.replace(data, dataset=dataset, labels=labels[keep], is_noisy=is_noisy)


def check_model_input(model: str, data: PipelineData) -> None:
    """Refuse an image model (cnn, resnet) on tabular data, naming both."""
    if model in IMAGE_MODELS and data.dataset.image_shape is None:
        raise ConfigError("model", f"{model} needs images (n, H, W, C), but {data.dataset.name!r} has tabular rows of "
                                   f"{int(np.prod(data.X.shape[1:]))} features; use --model mlp")


def choose_lr(lr: float | None, lambda_max: float, weight_decay: float = 0.0) -> tuple[float, str]:
    """(η, rule): ``lr`` if given, else η = 1/(λ_max + λ), half GD's stability limit 2/(λ_max + λ)."""
    if lr is not None:
        return float(lr), "given"
    return 1.0 / (lambda_max + weight_decay), "1/(lambda_max + weight_decay), NTK at init"


def check_lr_stability(lr: float, lambda_max: float, weight_decay: float = 0.0, *, allow: bool = False) -> list[str]:
    """Warnings for η ≥ 2/(λ_max + λ) (full-batch GD on the sum loss diverges along the top eigenvector).

    Raises :class:`UnstableLearningRate` with the limit unless ``allow``; then returns the warning.
    """
    from ntk_info.dynamics import max_stable_lr

    limit = max_stable_lr(lambda_max, weight_decay)
    if lr < limit:
        return []
    text = (f"lr {lr:.6g} is at or above the GD stability limit 2/(lambda_max + weight_decay) = {limit:.6g} "
            f"(lambda_max = {lambda_max:.6g}, NTK at init): training diverges and the scores are not meaningful")
    if not allow:
        raise UnstableLearningRate(f"lr: {text}; use --lr below {limit:.4g} (or omit --lr for 1/(lambda_max + "
                                   "weight_decay)), or pass --allow-unstable-lr to proceed anyway")
    return [text]


def influence_damping(lr: float, steps: float, weight_decay: float) -> float:
    """Damping added to λ in influence/MPE, so that their regularizer δ = λ + damping is λ when λ > 0, else
    1/(η t): t GD steps from w0 act like ridge with λ_eff ≈ 1/(η t) (early stopping ~ weight decay)."""
    return 0.0 if weight_decay > 0 else 1.0 / (lr * steps)


def loo_residual_norms(result) -> np.ndarray:
    """||y_i - f_{-i}(x_i)|| per sample, (n,), from a ``ScoreResult``."""
    residuals = np.asarray(result.loo_residuals)
    return np.linalg.norm(residuals.reshape(residuals.shape[0], -1), axis=1)


def base_scores(result, by=("fsi", "si", "loo_residual")) -> dict:
    """The per-sample scores ntk_info ranks by: {"fsi", "si", "loo_residual"} (n,) each, from a ``ScoreResult``."""
    values = {"fsi": lambda: np.asarray(result.fsi), "si": lambda: np.asarray(result.si),
              "loo_residual": lambda: loo_residual_norms(result)}
    unknown = [b for b in by if b not in values]
    if unknown:
        raise ValueError(f"by: unknown scores {unknown}; valid: {list(values)}")
    return {b: values[b]() for b in by}


def split_rows(data: PipelineData) -> list[dict]:
    """One row per sample used: its row in the user's data, the array that row indexes, and its role
    (train / validation / test). Rows not listed were not used (``--classes``, ``--n-train``)."""
    ds = data.dataset
    out = []
    for split, rows, array in (("train", data.rows_train, "X"), ("validation", data.rows_val, ds.val_array),
                               ("test", data.rows_test, ds.val_array)):
        out += [{"row": int(r), "array": array, "split": split} for r in rows]
    return out


def _no_stage(name):
    return contextlib.nullcontext()


class Pipeline:
    """Model, learning rate and scorers for one :class:`PipelineConfig` on loaded :class:`PipelineData`.

    ``stage(name)`` is a context manager factory for timing (the CLI prints them); ``progress`` shows bars.
    Raises :class:`UnstableLearningRate` or :class:`DegenerateData` before any training or scoring.
    """

    def __init__(self, config: PipelineConfig, data: PipelineData, *, stage=None, progress: bool = True):
        from ntk_info.scorer import kernel_for
        from ntk_info.training import targets

        self.config, self.data = config, data
        self.stage = stage or _no_stage
        self.progress = progress
        check_model_input(config.model, data)
        self.X = data.X
        self.Y = targets(data.labels, data.num_classes)
        with self.stage("build model"):
            self.model, self.params0 = self._build(config.model, config.width, config.seed)
        self.start = {"w0": "random init (seed)"}
        if config.init is not None:
            with self.stage("load --init"):
                self.params0 = self._load_init(config.init)
            self.start = {"w0": "checkpoint", "init": config.init}
        elif config.pretrain_classes is not None:
            with self.stage("pretrain on other classes"):
                self.params0, self.start = self._pretrain()
        with self.stage("estimate lr"):
            self.lambda_max = self._lambda_max(self.model, self.params0, config.model)
        self.lr, self.lr_rule = choose_lr(config.lr, self.lambda_max, config.weight_decay)
        self.warnings = check_lr_stability(self.lr, self.lambda_max, config.weight_decay,
                                           allow=config.allow_unstable_lr)
        self.damping = influence_damping(self.lr, config.steps, config.weight_decay)
        self.kernel = kernel_for(self.X.shape[0], self.Y.shape[1], config.kernel)
        self._trained = None
        self._point = None  # linearization point for config.linearize != "init" (cached)
        self._crossfit = None  # cross-fitted LOO (cached)
        self._trained_points = None  # LOO at "trained" and "trained-head" for pooled detection (cached)
        self.linearize_settings = {}
        self.trust = None

    def cleaned(self, cleaned, *, trust_samples: int = 0) -> "Pipeline":
        """This pipeline on the cleaned training set (:func:`clean_training_set` of ``cleaned``, a
        ``ntk_info.apps.clean.CleanResult`` over this pipeline's samples): same model, w0 (not re-trained or
        re-loaded) and settings; the learning rate is decided again on the cleaned inputs (1/(λ_max + λ) of
        the NTK at w0 on them, unless ``config.lr``), and a "trained" linearization point is trained again on
        the cleaned labels. ``trust_samples``: the trust check of the cleaned scores (0 skips it)."""
        import copy

        from ntk_info.scorer import kernel_for
        from ntk_info.training import targets

        data = clean_training_set(self.data, cleaned, X=self.X)
        new = copy.copy(self)
        new.config = dataclasses.replace(self.config, trust_samples=trust_samples).validate()
        new.data, new.X = data, data.X
        new.Y = targets(data.labels, data.num_classes)
        new.lambda_max = new._lambda_max(new.model, new.params0, new.config.model)
        new.lr, new.lr_rule = choose_lr(new.config.lr, new.lambda_max, new.config.weight_decay)
        new.warnings = check_lr_stability(new.lr, new.lambda_max, new.config.weight_decay,
                                          allow=new.config.allow_unstable_lr)
        new.damping = influence_damping(new.lr, new.config.steps, new.config.weight_decay)
        new.kernel = kernel_for(new.X.shape[0], new.Y.shape[1], new.config.kernel)
        new._trained, new._point, new.linearize_settings, new.trust = None, None, {}, None
        new._crossfit = new._trained_points = None
        return new

    def _build(self, name, width, seed, num_outputs=None):
        from ntk_info.models import get_model, init_params

        try:
            model = get_model(name, num_outputs or self.data.num_classes, **({"width": width} if name == "mlp" else {}))
        except ValueError as err:  # unknown name, unloadable factory
            raise ConfigError("model", str(err)) from None
        return model, init_params(model, self.X.shape[1:], seed=seed)

    def _load_init(self, path):
        """The checkpoint at ``path`` in the layout of the model's own parameters (structure, shapes checked)."""
        from ntk_info.checkpoint import load_params

        try:
            params = load_params(path, like=self.params0)
        except ValueError as err:
            raise ConfigError("init", f"{err} (the model is --model {self.config.model}"
                                      f"{f' --width {self.config.width}' if self.config.model == 'mlp' else ''} "
                                      f"with {self.data.num_classes} outputs)") from None
        import jax

        if not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(params)):
            raise ConfigError("init", f"checkpoint {path!r} has NaN or inf parameters")
        return params

    def _pretrain(self):
        """w0 pretrained on ``pretrain_classes`` of the same data, with this model's fresh head, and a record."""
        from ntk_info import data as data_mod
        from ntk_info.features import ntk_lambda_max
        from ntk_info.training import replace_head, targets, train

        c = self.config
        try:
            pre = data_mod.load_dataset(c.data, labels=c.labels, val_fraction=c.val_fraction, seed=c.seed,
                                        classes=_parse_classes(c.pretrain_classes), label_column=c.label_column)
        except ValueError as err:  # e.g. a class the data does not have
            raise ConfigError("pretrain_classes", str(err)) from None
        if pre.X.shape[1:] != self.X.shape[1:]:
            raise ConfigError("pretrain_classes", f"pretraining inputs have shape {pre.X.shape[1:]}, the task's "
                                                  f"{self.X.shape[1:]}")
        pre_model, pre_params = self._build(c.model, c.width, c.seed, num_outputs=pre.num_classes)
        lam = ntk_lambda_max(pre_model.apply_fn, pre_params, pre.X, seed=c.seed)
        lr = 1.0 / lam
        Y_pre = targets(pre.y, pre.num_classes)
        trained = train(pre_model.apply_fn, pre_params, pre.X, Y_pre, lr=lr, steps=c.pretrain_steps)
        accuracy = float(np.mean(np.argmax(np.asarray(pre_model.apply_fn(trained, pre.X)), 1) == pre.y))
        params0 = replace_head(trained, self.params0)  # the zoo's head: its last layer, freshly initialized
        return params0, {"w0": "pretrained on other classes, fresh head",
                         "pretrain_classes": [str(v) for v in pre.label_values], "pretrain_n": int(pre.X.shape[0]),
                         "pretrain_steps": c.pretrain_steps, "pretrain_lr": lr,
                         "pretrain_train_accuracy": accuracy,
                         "pretrain_lr_rule": "1/lambda_max of the pretraining model's NTK at init, full-batch GD"}

    def _lambda_max(self, model, params0, name):
        from ntk_info.features import ntk_lambda_max

        lam = ntk_lambda_max(model.apply_fn, params0, self.X, seed=self.config.seed)
        if not (math.isfinite(lam) and lam > 0):
            raise DegenerateData(
                f"data {self.config.data!r}: the NTK of the {name} at init is degenerate on these inputs "
                f"(largest eigenvalue {lam!r}; inputs range over [{float(np.min(self.X)):.3g}, "
                f"{float(np.max(self.X)):.3g}]): rescale X (e.g. to [0, 1] or standardized) and make sure the "
                "features vary")
        return lam

    def retraining_setup(self, name: str, width: int):
        """(model, params0, lr, warnings) for retraining another architecture on kept subsets (init seed + 1):
        ``config.lr`` or 1/(λ_max + λ) of that model's NTK at init, checked like the scored model's."""
        model, params0 = self._build(name, width, self.config.seed + 1)
        lam = self._lambda_max(model, params0, name)
        lr, _ = choose_lr(self.config.lr, lam, self.config.weight_decay)
        return model, params0, lr, check_lr_stability(lr, lam, self.config.weight_decay,
                                                      allow=self.config.allow_unstable_lr)

    def replace_inputs(self, X) -> None:
        """Train and score on ``X`` instead (e.g. with adversarial examples); forgets the trained networks."""
        self.X = np.asarray(X)
        self._trained = self._crossfit = self._trained_points = None

    def trained(self):
        """The real network after ``steps`` full-batch GD steps on (X, Y) (``ntk_info.training.train``), cached."""
        if self._trained is None:
            from ntk_info.training import train

            with self.stage("train network"):
                self._trained = train(self.model.apply_fn, self.params0, self.X, self.Y, lr=self.lr,
                                      steps=self.config.steps, weight_decay=self.config.weight_decay)
        return self._trained

    def _score_options(self):
        c = self.config
        return dict(lr=self.lr, steps=c.steps, weight_decay=c.weight_decay, discrete=True, kernel=self.kernel)

    def score(self):
        """``ntk_info.score`` of the training samples (F-SI on the validation half), with ``result.trust`` (and
        ``self.trust``) = ``ntk_info.trust`` on ``trust_samples`` retrainings unless that is 0."""
        import ntk_info

        c = self.config
        if c.linearize != "init":
            return self._score_linearized()
        with self.stage("scores (F-SI, SI, LOO)"):
            result = ntk_info.score(self.model.apply_fn, self.params0, self.X, self.Y, self.data.X_val,
                                    coords_per_layer=c.coords_per_layer, seed=c.seed, method=c.projection,
                                    progress=self.progress, trust_samples=0, **self._score_options(),
                                    **({} if c.segments is None else dict(linearize="segments", segments=c.segments)))
        if not c.trust_samples:
            return result
        samples = min(c.trust_samples, self.X.shape[0])
        with self.stage(f"trust check ({samples} retrainings)"):
            self.trust = ntk_info.trust(self.model.apply_fn, self.params0, self.X, self.Y, self.data.X_val,
                                        self.data.y_val, result=result, lr=self.lr, steps=c.steps,
                                        weight_decay=c.weight_decay, samples=samples, seed=c.seed,
                                        progress=self.progress)
        return dataclasses.replace(result, trust=self.trust)

    def linearization(self):
        """The ``ntk_info.linearize.LinearizationPoint`` of ``config.linearize`` "trained" or "trained-head":
        the network trained with Adam and early stopping on the validation half (the last layer re-initialized
        for "trained-head"), cached."""
        from ntk_info.linearize import linearization_point
        from ntk_info.training import targets

        c = self.config
        if c.linearize == "init":
            raise ValueError("linearize: 'init' scores at w0 (params0) with GD replayed; linearization() is for "
                             "'trained' and 'trained-head'")
        if self._point is None:
            with self.stage(f"train network (Adam, early stopping) for linearize={c.linearize}"):
                self._point = linearization_point(c.linearize, self.params0, self.X, self.Y, self.data.X_val,
                                                  targets(self.data.y_val, self.data.num_classes), model=self.model,
                                                  train_options={"seed": c.seed}, head_seed=c.seed + 1)
        return self._point

    @property
    def crossfit_result(self):
        """The cached cross-fitted LOO (:meth:`crossfit`), None before it ran."""
        return self._crossfit

    def crossfit(self, folds: int = 5):
        """``ntk_info.crossfit.crossfit_leave_one_out`` of the training set, cached: ``folds`` networks (fewer
        when a class has fewer samples; at least 2) trained with Adam (cross-entropy, early stopping on the
        validation half) without one fold each, every sample left out exactly of the linearized network
        that never saw it. Raises ConfigError when a class has a single sample (no fold can hold it out)."""
        from ntk_info.crossfit import crossfit_leave_one_out

        if self._crossfit is None:
            c = self.config
            labels = np.asarray(self.data.labels)
            counts = np.bincount(labels, minlength=self.data.num_classes)
            folds = int(min(folds, counts.min()))
            if folds < 2:
                rare = self.data.label_text(np.flatnonzero(counts < 2))
                raise ConfigError("methods", f"cross-fitting needs at least 2 training samples of every class; "
                                             f"class(es) {', '.join(map(str, rare))} have fewer: drop crossfit and "
                                             "pooled from --methods, or use more data")
            with self.stage(f"cross-fit ({folds} networks)"):
                self._crossfit = crossfit_leave_one_out(
                    self.model.apply_fn, self.params0, self.X, labels, self.data.X_val, self.data.y_val,
                    num_classes=self.data.num_classes, folds=folds, seed=c.seed, progress=self.progress)
        return self._crossfit

    def trained_points(self):
        """(ScoreResult at "trained", ScoreResult at "trained-head"), cached: one network trained with Adam and
        early stopping on the validation half (``ntk_info.linearize.linearization_point``), linearized at its
        weights and at its body with a fresh head (seed + 1), t = ∞ with λ by exact LOO
        (``ntk_info.linearize.score_at``). With :meth:`crossfit`, the left-out models that pooled detection
        averages."""
        from ntk_info.linearize import linearization_point, score_at
        from ntk_info.training import reinit_head, targets

        if self._trained_points is None:
            c = self.config
            if c.linearize in ("trained", "trained-head"):  # the same Adam network :meth:`linearization` trained
                trained = self.linearization().trained.params
            else:
                with self.stage("Adam network (pooled)"):
                    trained = linearization_point("trained", self.params0, self.X, self.Y, self.data.X_val,
                                                  targets(self.data.y_val, self.data.num_classes), model=self.model,
                                                  train_options={"seed": c.seed}).params
            head = reinit_head(self.model, trained, c.seed + 1, input_shape=tuple(self.X.shape[1:]))
            results = []
            for name, params in (("trained", trained), ("trained-head", head)):
                with self.stage(f"LOO at {name} (pooled)"):
                    results.append(score_at(self.model.apply_fn, params, self.X, self.Y, None,
                                            coords_per_layer=c.coords_per_layer, seed=c.seed, method=c.projection,
                                            kernel=self.kernel, progress=self.progress))
            self._trained_points = tuple(results)
        return self._trained_points

    def _score_linearized(self):
        """Scores of the network linearized at Adam-trained weights (``config.linearize`` "trained" or
        "trained-head"; :meth:`linearization`), t = ∞ with λ by exact LOO (``ntk_info.linearize.score_at``);
        the point's settings and λ are kept in ``linearize_settings``."""
        from ntk_info.linearize import score_at

        c = self.config
        point = self.linearization()
        with self.stage("scores (F-SI, SI, LOO)"):
            result = score_at(self.model.apply_fn, point.params, self.X, self.Y, self.data.X_val,
                              coords_per_layer=c.coords_per_layer, seed=c.seed, method=c.projection,
                              kernel=self.kernel, progress=self.progress)
        self.linearize_settings = {**point.settings, "linearize_steps": "inf",
                                   "linearize_weight_decay": result.settings["weight_decay"],
                                   "linearize_weight_decay_rule": result.settings.get("weight_decay_rule")}
        return result

    def _rescoring_point(self):
        """(params, score options) that :meth:`rescorer` linearizes at: w0 with GD replayed for "init"; the
        :meth:`linearization` point with t = ∞ and the λ that :meth:`score` chose on the full set otherwise."""
        c = self.config
        if c.segments is not None:
            raise ConfigError("segments", f"iterative rescoring recomputes the scores of each kept subset on the "
                                          f"network linearized at one point; the scores of --segments {c.segments} "
                                          "come from the real training run linearized at checkpoints, which "
                                          "rescoring does not replay. Drop --iterative, or drop --segments")
        if c.linearize == "init":
            return self.params0, self._score_options()
        if "linearize_weight_decay" not in self.linearize_settings:
            raise ValueError(f"linearize: rescoring at the {c.linearize!r} point uses the ridge λ that score() "
                             "chooses by exact LOO on the full set; call Pipeline.score() first")
        options = dict(lr=1.0, steps=math.inf, weight_decay=self.linearize_settings["linearize_weight_decay"],
                       discrete=False, kernel=self.kernel)
        return self.linearization().params, options

    def rescorer(self, by: str):
        """score_fn(kept) -> (len(kept),) ``by`` scores of the kept samples scored on the kept set alone, at the
        point :meth:`score` linearizes at (``config.linearize``; for "trained"/"trained-head" after
        :meth:`score`, with its λ; refused with ``--segments``).

        Features (and f0) do not depend on which samples are kept: computed once with the same
        projection as :meth:`score`. With one shared (trace, or k = 1) kernel the kept subsets are
        rescored by ``ntk_info.apps.summarize.SubsetRescorer`` (one eigh per step, the filter fitted once,
        nothing compiled per step; equal to scoring the kept subset from scratch); otherwise
        ``ntk_info.scorer.score_features`` on ``phi[kept]`` — the code path of ``score``.
        """
        import ntk_info
        from ntk_info.apps.summarize import SubsetRescorer
        from ntk_info.scorer import kernel_for, score_features, trace_features

        c = self.config
        if self.kernel == "streamed":
            raise ConfigError("kernel", "iterative rescoring keeps the features of every kept subset in memory, "
                                        "which the streamed kernel (--kernel streamed, or auto beyond 10,000 samples) "
                                        "avoids; drop --iterative, or pass --kernel trace")
        params, options = self._rescoring_point()
        with self.stage("features for rescoring"):
            feats = ntk_info.projected_features(self.model.apply_fn, params, self.X,
                                                coords_per_layer=c.coords_per_layer, seed=c.seed,
                                                method=c.projection, progress=False)
            phi_val = feats.projection.features(self.data.X_val, progress=False).phi
        options["kernel"] = self.kernel  # decided for the full set: the kept subsets keep the same kernel
        n, k = feats.outputs.shape
        if kernel_for(n, k, self.kernel) == "trace" or k == 1:
            with self.stage("features for rescoring"):
                phi, phi_v = trace_features(feats.phi), trace_features(phi_val)
                rescore = SubsetRescorer(phi @ phi.T, self.Y - feats.outputs, phi_v @ phi.T, lr=options["lr"],
                                         steps=options["steps"], weight_decay=options["weight_decay"],
                                         discrete=options["discrete"], by=by)

            def fast_score_fn(kept):
                with self.stage("rescoring (iterative)"):
                    return rescore(kept)

            return fast_score_fn

        def score_fn(kept):
            kept = np.asarray(kept)
            with self.stage("rescoring (iterative)"):
                result = score_features(feats.phi[kept], feats.outputs[kept], self.Y[kept], phi_val, progress=False,
                                        **options)
            return base_scores(result, (by,))[by]

        return score_fn

    def settings(self) -> dict:
        """Every setting that produced the numbers, as used (for settings.json)."""
        c, d = self.config, self.data
        return {"data": c.data, "n_train": int(self.X.shape[0]), "n_val": int(d.X_val.shape[0]),
                "n_test": int(d.X_test.shape[0]), "num_classes": d.num_classes, "noise": c.noise,
                "model": c.model, "width": c.width if c.model == "mlp" else None,
                "lr": self.lr, "lr_rule": self.lr_rule, "lambda_max_ntk_init": self.lambda_max,
                "lr_stability_limit": 2.0 / (self.lambda_max + c.weight_decay),
                "steps": c.steps, "weight_decay": c.weight_decay,
                "influence/MPE damping added to weight_decay": self.damping,
                "influence/MPE regularizer (weight_decay + damping)": c.weight_decay + self.damping,
                "influence/MPE Jacobian": "exact when n*k <= 2000, else projected features at the trained weights",
                "coords_per_layer": c.coords_per_layer, "projection": c.projection,
                "kernel": self.kernel, "kernel_requested": c.kernel,
                "kernel_meaning": {"full": "full NTK, (n*k) x (n*k)",
                                   "trace": "output-averaged (trace) NTK, the k outputs share one n x n kernel",
                                   "streamed": "full NTK, (n*k) x (n*k), features streamed in batches (never stored)"
                                   }[self.kernel],
                "seed": c.seed, **self.start, "warnings": list(self.warnings), "linearize": c.linearize,
                **self.linearize_settings, "trust_samples": c.trust_samples,
                **({"trust": self.trust} if self.trust is not None else {})}
