"""Checks of the SLURM_* keys (SWEEP_EXECUTOR=slurm), run with the other cross-key checks in config.py.

SLURM_EXTRA_ARGS words are checked as sbatch options: each one is ``--name`` or ``--name=value``
with a name sbatch knows and the tool does not set itself (array, job name, output, signal...);
they go to sbatch as argv words, never through a shell.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from helpers.errors import WorkflowError

# options the Slurm executor sets itself: a second value would break the campaign's bookkeeping
OWNED = frozenset({"array", "job-name", "J", "output", "o", "error", "e", "parsable", "wrap", "open-mode", "signal",
                   "requeue", "no-requeue", "chdir", "D", "export", "partition", "p", "account", "A", "qos", "q",
                   "constraint", "C", "cpus-per-task", "c", "mem", "gpus-per-node", "time", "t", "test-only",
                   "wait", "W", "dependency", "d"})
# long options of sbatch (Slurm 22.05) a user may add
ALLOWED = frozenset({
    "acctg-freq", "batch", "bb", "bbf", "begin", "cluster-constraint", "clusters", "M", "comment", "contiguous",
    "core-spec", "cores-per-socket", "cpu-freq", "cpus-per-gpu", "deadline", "delay-boot", "distribution",
    "exclude", "exclusive", "extra-node-info", "get-user-env", "gid", "gpu-bind", "gpu-freq", "gpus", "G",
    "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "hint", "hold", "ignore-pbs", "input",
    "kill-on-invalid-dep",
    "licenses", "L", "mail-type", "mail-user", "mcs-label", "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus",
    "network", "nice", "no-kill", "nodefile", "nodelist", "w", "nodes", "N", "ntasks", "n", "ntasks-per-core",
    "ntasks-per-gpu", "ntasks-per-node", "ntasks-per-socket", "overcommit", "oversubscribe", "s", "power",
    "priority", "profile", "propagate", "quiet", "reboot", "reservation", "sockets-per-node", "spread-job",
    "switches", "thread-spec", "threads-per-core", "time-min", "tmp", "uid", "use-min-nodes", "verbose",
    "wckey", "x",
})
_OPTION = re.compile(r"^--([a-z][a-z-]*)(?:=(.+))?$")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")
_NAMES = re.compile(r"^[A-Za-z0-9_.+-]{1,128}(,[A-Za-z0-9_.+-]{1,128})*$")
_MEM = re.compile(r"^[0-9]+[KMGT]?$")
_TIME = re.compile(r"^([0-9]+|[0-9]+:[0-9]{1,2}|[0-9]+:[0-9]{1,2}:[0-9]{1,2}|[0-9]+-[0-9]{1,2}"
                   r"|[0-9]+-[0-9]{1,2}:[0-9]{1,2}|[0-9]+-[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2})$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,|&*\[\]()-]{1,256}$")


def extra_args_problem(words: Sequence[str]) -> str:
    """'' when every word is an sbatch option the user may add, else what is wrong with the first bad one."""
    for word in words:
        found = _OPTION.match(word)
        if not found:
            return (f"word {word!r} is not an sbatch option; write each as --name or --name=value "
                    "(e.g. --exclusive --nice=10)")
        name = found.group(1)
        if name in OWNED:
            return f"--{name} is set by workflow.sh itself (use its own key, e.g. SLURM_TIME, or leave it out)"
        if name not in ALLOWED:
            return f"--{name} is not an sbatch option workflow.sh passes on (see man sbatch)"
    return ""


def check(text: Callable[[str], str], words: Callable[[str], list], bad: Callable[[str, str], WorkflowError]
          ) -> None:
    """Raise ``bad(key, what)`` for the first malformed SLURM_* key."""
    if text("SLURM_PARTITION") and not _NAMES.match(text("SLURM_PARTITION")):
        raise bad("SLURM_PARTITION", "is not a partition name (or comma list); use letters, digits, _ . -")
    for key in ("SLURM_ACCOUNT", "SLURM_QOS"):
        if text(key) and not _NAME.match(text(key)):
            raise bad(key, "is not a Slurm name; use letters, digits, _ . -")
    if text("SLURM_CONSTRAINT") and not _CONSTRAINT.match(text("SLURM_CONSTRAINT")):
        raise bad("SLURM_CONSTRAINT", "is not a node-feature expression (e.g. a100 or a100|h100)")
    if text("SLURM_MEM") and not _MEM.match(text("SLURM_MEM")):
        raise bad("SLURM_MEM", "is not a memory size; use a number with an optional K/M/G/T suffix, e.g. 32G")
    if text("SLURM_TIME") and not _TIME.match(text("SLURM_TIME")):
        raise bad("SLURM_TIME", "is not a Slurm time; use minutes, HH:MM:SS or D-HH:MM:SS")
    problem = extra_args_problem(words("SLURM_EXTRA_ARGS"))
    if problem:
        raise bad("SLURM_EXTRA_ARGS", problem)
