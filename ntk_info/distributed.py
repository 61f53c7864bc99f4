"""Multi-process LOO on JAX's own runtime (``jax.distributed``): samples sharded over processes.

Each process holds a contiguous shard of the training samples (``process_shard``), computes its
features on its own devices, and adds its Φ_bᵀΦ_b and Φ_bᵀr_b to the Gram pass; the p × p Gram
and the vector are summed across processes with a JAX collective (``sum_across_processes``, an
all-gather of the per-process sums), so every process factors the same ΦᵀΦ and runs the per-sample
LOO of its own samples (``ntk_info.streaming``). The per-sample results are gathered back in sample
order (``distributed_leave_one_out``). No communication other than JAX's own.

Launch (one process per host or per GPU; every process runs the same script):

    # in the script, before any other JAX call:
    jax.distributed.initialize()            # on SLURM / Cloud TPU / Open MPI: detected automatically
    # or explicitly, e.g. 2 hosts:
    jax.distributed.initialize(coordinator_address="host0:12345", num_processes=2, process_id=RANK)

    # two CPU processes on one machine (as tests/test_distributed.py does):
    JAX_PLATFORMS=cpu python my_script.py --process-id 0 &   # each calls initialize("localhost:PORT", 2, id)
    JAX_PLATFORMS=cpu python my_script.py --process-id 1

On CPU the cross-process collectives need ``jax.config.update("jax_cpu_collectives_implementation",
"gloo")`` before ``initialize`` (GPUs use NCCL, TPUs ICI/DCN, with nothing to set).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ntk_info.streaming import StreamedLOO, streamed_leave_one_out

__all__ = ["process_shard", "sum_across_processes", "gather_samples", "distributed_leave_one_out"]


def process_shard(n: int, process_id: int | None = None, num_processes: int | None = None) -> slice:
    """The contiguous block of sample indices of this process: n split as evenly as possible."""
    process_id = jax.process_index() if process_id is None else process_id
    num_processes = jax.process_count() if num_processes is None else num_processes
    bounds = np.linspace(0, n, num_processes + 1).round().astype(int)
    return slice(int(bounds[process_id]), int(bounds[process_id + 1]))


def sum_across_processes(tree):
    """Σ over processes of every array in ``tree`` (same shapes on every process), float64 kept."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return tree
    return jax.tree_util.tree_map(lambda x: np.sum(np.asarray(multihost_utils.process_allgather(np.asarray(x))),
                                                   axis=0), tree)


def gather_samples(x):
    """Concatenate per-process arrays of samples (n_local, ...) in process order; n_local may differ."""
    from jax.experimental import multihost_utils

    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
    counts = np.asarray(multihost_utils.process_allgather(np.array([x.shape[0]]))).reshape(-1)
    padded = np.zeros((int(counts.max()),) + x.shape[1:], x.dtype)
    padded[: x.shape[0]] = x
    stacked = np.asarray(multihost_utils.process_allgather(padded))
    return np.concatenate([stacked[i, :count] for i, count in enumerate(counts)])


def distributed_leave_one_out(projection, X_local, Y_local, X_val=None, **settings) -> StreamedLOO:
    """``streamed_leave_one_out`` over every process: each passes its own samples (X_local, Y_local),
    e.g. ``X[process_shard(n)]``, and the same X_val and settings; ΦᵀΦ and Φᵀr are summed across
    processes, the per-sample results are gathered on every process in process order (samples of
    process 0 first). Identical to one process on all samples (tests/test_distributed.py)."""
    local = streamed_leave_one_out(projection, X_local, Y_local, X_val, sum_across=sum_across_processes, **settings)
    fields = ("weight_change_sq", "train_prediction_change_sq", "self_prediction_change", "fitted_residuals",
              "outputs") + (("prediction_change_sq",) if local.prediction_change_sq is not None else ())
    return dataclasses.replace(local, **{name: gather_samples(getattr(local, name)) for name in fields})
