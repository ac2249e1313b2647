"""Which process am I? Rank checks that work before any Trainer has set up a process group.

Lightning's own launchers (``strategy=ddp`` re-running the command per device), ``torchrun``
and SLURM ``srun`` start one process per device; every process runs the same pipeline, and
only global rank 0 writes reports, figures and logs. The launchers say who is who in the
environment: ``RANK`` (torchrun), ``SLURM_PROCID`` (srun), ``LOCAL_RANK`` / ``NODE_RANK``
(Lightning's subprocess launcher). Global rank 0 is the process where all of them are 0.
"""

from __future__ import annotations

import os

RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def global_rank() -> int:
    """Best guess of this process's global rank from the launcher's environment (0 when alone)."""
    if os.environ.get("RANK", "").isdigit():
        return int(os.environ["RANK"])
    if os.environ.get("SLURM_PROCID", "").isdigit() and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return int(os.environ["SLURM_PROCID"])
    return max(int(os.environ.get(k, "0") or 0) for k in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


def is_global_zero() -> bool:
    """True in the one process that writes files (global rank 0, or a plain single process)."""
    return global_rank() == 0


def distributed_run_id() -> str | None:
    """A name every process of one distributed job agrees on (SLURM job / torchrun run id)."""
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    if rid and rid != "none" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f"torchrun-{rid}"
    return None
