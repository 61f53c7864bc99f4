"""ntk_info: unique information of training samples via exact leave-one-out on the linearized network.

Public names are imported lazily, so ``import ntk_info`` stays fast (JAX itself takes a second or
more to import); each name is loaded from its module on first use.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # dynamics: filters g and closed-form training dynamics
    "Dynamics": "dynamics",
    "predict": "dynamics",
    "max_stable_lr": "dynamics",
    # exact leave-one-out engine
    "leave_one_out": "loo",
    "LOOResult": "loo",
    # exact leave-one-group-out (sources, classes) and only-group fits
    "leave_group_out": "group_loo",
    "GroupLOOResult": "group_loo",
    # scores from leave-one-out results
    "si_isotropic": "scores",
    "si_langevin": "scores",
    "si_lyapunov": "scores",
    "fsi": "scores",
    "loo_loss": "scores",
    # features from models
    "projected_features": "features",
    "exact_ntk": "features",
    "kernel_relative_error": "features",
    # the user's model and parameters: Flax / Equinox adapters, a parameter mask, checkpoints
    "from_flax": "adapters",
    "from_equinox": "adapters",
    "linearize_subset": "adapters",
    "load_params": "checkpoint",
    "save_params": "checkpoint",
    "pretrain_then_finetune": "training",
    "replace_head": "training",
    # one-call scorer
    "score": "scorer",
    "ScoreResult": "scorer",
    # comparisons
    "compare": "comparison",
    # evidence that the scores hold for the real network
    "trust": "evidence",
}

# Submodules reachable as attributes (``ntk_info.influence.influence_exact``), imported on first use.
_SUBMODULES = ("influence", "mpe", "brute", "streaming", "distributed", "segments", "linearize", "crossfit",
               "models", "training", "data", "features")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"ntk_info.{_EXPORTS[name]}")
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f"ntk_info.{name}")
    raise AttributeError(f"module 'ntk_info' has no attribute {name!r}")


def __dir__():
    return __all__ + ["__version__"]
