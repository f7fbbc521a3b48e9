"""Every workflow.env key: its type, default, allowed values and one-line meaning.

This table is the single source of truth: config.py validates against it, `validate` and
`print-resolved-env` read it, and tests check that workflow.env lists every key in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from helpers.pod.context import RUN_ENV_PREFIXES

KeyType = Literal["str", "int", "float", "bool", "enum", "path", "podpath", "secret", "words"]

# A default of LOCAL_DEFAULT-marked keys differs on the `local` target: pod paths live inside
# the checkout (.workflow/pod/...) so the demo writes nothing outside it.
POD_DIR = ".workflow/pod"


@dataclass(frozen=True)
class Key:
    name: str
    type: KeyType
    default: str  # as written in workflow.env ("" = unset / automatic)
    doc: str  # the one-line comment in workflow.env
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    local_default: str | None = None  # default on the `local` target, if different
    section: str = ""

    @property
    def is_secret(self) -> bool:
        """Declared in this table (OOM_BATCH_KEY names a trainer key, it is no secret); run variables
        outside the table are judged by their names (*_KEY, *_TOKEN, ...)."""
        return self.type == "secret"


_SECRET_NAME = re.compile(r"(_KEY|_TOKEN|_SECRET|PASSWORD|_PASS|_CREDENTIALS)$")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


# Variables for the runs themselves (W&B, Hugging Face, NCCL, ...): accepted in workflow.env
# without being in the table, synced to the pod env file, and exported to every task and run.
PASSTHROUGH_PREFIXES = RUN_ENV_PREFIXES


def _k(section: str, name: str, type_: KeyType, default: str, doc: str, **kw: object) -> Key:
    return Key(name=name, type=type_, default=default, doc=doc, section=section, **kw)  # type: ignore[arg-type]


_T, _P, _C, _B, _F, _K, _S, _R, _L, _U = (
    "Target", "Pod paths", "Checkout", "Bootstrap", "Workflow state", "Tracked tasks", "Sweeps", "Fetch", "Lium",
    "Slurm",
)
_M = "Tracking"

KEYS: tuple[Key, ...] = (
    # --- where the pod is
    _k(_T, "OPS_DEFAULT_HOST", "str", "local",
       "where the pod is: local (this machine, no SSH), an ~/.ssh/config alias, or [user@]host[:port]"),
    _k(_T, "OPS_SSH_CONFIG", "path", "~/.ssh/config", "ssh_config file read for aliases (missing is fine)"),
    _k(_T, "OPS_KNOWN_HOSTS", "path", "~/.ssh/known_hosts",
       "host keys are pinned here on first connect (accept-new), then a changed key is refused"),
    _k(_T, "OPS_SSH_KEY", "path", "", "private key for the pod; empty = IdentityFile from ssh_config or default keys"),
    _k(_T, "SSH_CONNECT_TIMEOUT_SECS", "int", "15", "bound on connecting + authenticating", minimum=1,
       maximum=600),
    _k(_T, "SSH_KEEPALIVE_SECS", "int", "15", "keepalive interval on the one SSH connection", minimum=1,
       maximum=3600),
    _k(_T, "SSH_CLIENT", "enum", "auto", "auto = OpenSSH's ssh if installed (one shared connection), else paramiko",
       choices=("auto", "openssh", "paramiko")),
    _k(_T, "CONNECTION_PERSIST_SECS", "int", "300", "an idle shared SSH connection stays open this long (0 = none)",
       minimum=0, maximum=86400),
    _k(_T, "RECONNECT_SECS", "int", "300", "task-wait/sweep-watch/task-logs -f reconnect for this long after a drop",
       minimum=0, maximum=86400),
    # --- Lium
    _k(_L, "LIUM_TARGET", "str", "",
       "Lium pod name, HUID or UUID; when set the pod is found through the Lium API (then SSH)"),
    _k(_L, "LIUM_API_KEY", "secret", "", "Lium API key; empty = environment or ~/.lium/config.ini"),
    _k(_L, "LIUM_BASE_URL", "str", "", "Lium API base URL; empty = environment LIUM_BASE_URL or https://lium.io/api"),
    _k(_L, "LIUM_POD_NAME", "str", "", "pod-up: name of the new pod"),
    _k(_L, "LIUM_EXECUTOR_ID", "str", "", "pod-up: rent this executor; empty = cheapest matching the filters"),
    _k(_L, "LIUM_GPU_TYPE", "str", "", "pod-up filter: GPU model, e.g. H100"),
    _k(_L, "LIUM_GPU_COUNT", "int", "", "pod-up filter: GPUs per pod", minimum=1, maximum=64),
    _k(_L, "LIUM_COUNTRY", "str", "", "pod-up filter: ISO country code"),
    _k(_L, "LIUM_VOLUME", "str", "", "pod-up volume: id:<HUID> (existing) or new:name=<name>; with "
       "OPS_REMOTE_OUTPUTS_DIR empty the outputs (run dirs, checkpoints) go on it: <mount>/workflow/outputs"),
    _k(_L, "LIUM_TTL_HOURS", "float", "24", "pod-up: the provider removes the pod after this many hours, even "
       "if nobody is watching (a dead-man switch; off = never)", choices=("off",)),
    _k(_L, "LIUM_TEMPLATE_ID", "str", "", "pod-up: template (image) id; empty = the Lium default"),
    _k(_L, "LIUM_YES", "bool", "0", "pod-up/pod-delete: do not ask for confirmation"),
    _k(_L, "LIUM_READY_TIMEOUT_SECS", "int", "900", "pod-up: how long to wait for the pod to be ready",
       minimum=10, maximum=7200),
    _k(_L, "LIUM_SSH_KEY_PATH", "path", "", "private key for Lium pods; empty = the Lium SDK's configured key"),
    _k(_L, "MANAGE_MAX_RECOVERIES", "int", "3", "sweep-watch --manage: at most this many recoveries of a lost pod "
       "per campaign (0 = watch only)", minimum=0, maximum=100),
    # --- pod paths
    _k(_P, "OPS_REMOTE_OUTPUTS_DIR", "podpath", "~/workflow/outputs",
       "durable outputs on the pod: run dirs, _tasks, _manifests, _campaigns, _control",
       local_default=f"{POD_DIR}/outputs"),
    _k(_P, "OPS_REMOTE_REPO", "podpath", "~/workflow/repo", "where checkout clones REPO_URL on the pod",
       local_default=f"{POD_DIR}/repo"),
    _k(_P, "REMOTE_ENV_PATH", "podpath", "/mnt/project.env",
       "the resolved config is written here on the pod (mode 0600, only when changed)",
       local_default=f"{POD_DIR}/project.env"),
    _k(_P, "DATA_DIR", "podpath", "~/workflow/data/fineweb10B",
       "FineWeb shards (fineweb_train_*.bin / fineweb_val_*.bin) on the pod",
       local_default=f"{POD_DIR}/data/fineweb10B"),
    _k(_P, "REMOTE_PYTHON_BIN", "str", "",
       "python with torch that the run venv is made from; empty = python3 (local: the python running this)"),
    _k(_P, "VENV_DIR", "podpath", "", "the run venv; empty = ${OPS_REMOTE_REPO}/.venv"),
    # --- checkout
    _k(_C, "REPO_URL", "str", "",
       "git URL (or local path / file://) to clone; empty on local = this checkout, elsewhere required"),
    _k(_C, "CHECKOUT_BRANCH", "str", "", "branch to check out; empty = the remote's default branch"),
    _k(_C, "CHECKOUT_PR", "str", "", "pull request to check out instead: N or pull/N/head"),
    _k(_C, "EXPECT_GIT_SHA", "str", "", "fail checkout unless HEAD is this commit (7-40 hex digits)"),
    _k(_C, "CHECKOUT_FORCE_CLEAN", "bool", "0",
       "1 = discard uncommitted changes in the pod checkout (else checkout refuses)"),
    # issue 10: sending the local tree's uncommitted changes
    _k(_C, "CHECKOUT_PUSH_LOCAL", "bool", "0",
       "1 = checkout sends this checkout's uncommitted tracked changes as a patch on top of the commit"),
    _k(_C, "VENV_RECREATE", "bool", "0", "1 = rebuild the run venv from REMOTE_PYTHON_BIN"),
    _k(_C, "PIP_INSTALL_ARGS", "words", "-r examples/nanogpt/requirements.txt",
       "what checkout pip-installs into the venv (run in the repo); auto = requirements.txt or -e .; none = nothing"),
    _k(_C, "REQUIRE_CUDA", "bool", "1", "checkout fails unless torch.cuda.is_available() (0 on CPU hosts)",
       local_default="0"),
    _k(_C, "CHECK_DATA", "bool", "1", "checkout validates the FineWeb shards under DATA_DIR"),
    _k(_C, "DOWNLOAD_FINEWEB", "bool", "0", "checkout downloads a minimal FineWeb train/val shard pair if missing"),
    _k(_C, "DATA_BUILD_OFFLINE", "bool", "0",
       "checkout builds small byte-level shards from Python's own source if missing (CPU demo)",
       local_default="1"),
    _k(_C, "CHECKOUT_TIMEOUT_SECS", "int", "1800", "bound on each checkout step (clone, pip, download)",
       minimum=10, maximum=86400),
    # --- bootstrap
    _k(_B, "AUTO_INSTALL_PREREQS", "bool", "0", "bootstrap installs missing tmux/rsync/git/python3-venv via apt-get"),
    _k(_B, "BOOTSTRAP_SCRIPT", "podpath", "", "script on the pod that bootstrap runs (e.g. /mnt/bootstrap-pod.sh)"),
    _k(_B, "WANDB_SETUP_SCRIPT", "podpath", "",
       "script on the pod that sets up W&B (runs only when SWEEP_WANDB=1 or RUN_WANDB_SETUP=1)"),
    _k(_B, "RUN_WANDB_SETUP", "bool", "0", "run WANDB_SETUP_SCRIPT in bootstrap even without SWEEP_WANDB"),
    _k(_B, "SWEEP_WANDB", "bool", "0", "runs log to W&B (bootstrap then runs WANDB_SETUP_SCRIPT)"),
    _k(_B, "WANDB_API_KEY", "secret", "", "W&B key for the runs; empty = environment"),
    _k(_B, "HF_TOKEN", "secret", "", "Hugging Face token for the runs; empty = environment"),
    # --- state machine
    _k(_F, "WF_FSM_ENFORCE", "bool", "1", "refuse commands the workflow state does not allow (exit 4)"),
    _k(_F, "WF_STATE_FILE", "podpath", "",
       "state file; empty = ${OPS_REMOTE_OUTPUTS_DIR}/_control/workflow_state.json"),
    # --- tracked tasks
    _k(_K, "WF_TMUX_SESSION", "str", "wf-tasks", "tmux session holding one window per tracked task"),
    _k(_K, "TMUX_SOCKET", "str", "", "tmux server socket name (tmux -L); empty = the default server"),
    _k(_K, "TASK_TIMEOUT_SECS", "int", "21600", "default wall-clock limit of a task (0 = none, explicitly)",
       minimum=0),
    _k(_K, "TASK_STALL_SECS", "int", "1800", "default stall window: no output this long stops a task (0 = off)",
       minimum=0),
    _k(_K, "TASK_KILL_GRACE_SECS", "int", "10", "after SIGTERM, wait this long before SIGKILL", minimum=0,
       maximum=600),
    _k(_K, "TASK_LOST_AFTER_SECS", "int", "60", "a running task whose heartbeat is older than this is lost",
       minimum=10),
    _k(_K, "TASK_FATAL_PATTERNS_FILE", "path", "",
       "extra fatal-error patterns, one 'CLASS REGEX' per line (local file, sent with each task)"),
    # --- sweeps
    _k(_S, "SWEEP_CSV", "path", "examples/sweeps/demo_tiny_cpu.csv",
       "the sweep CSV (run_id,config,seed,overrides,notes)"),
    _k(_S, "SWEEP_TMUX_SESSION", "str", "wf-sweep", "tmux session whose 'sweep' window runs the executor"),
    _k(_S, "TRAIN_WORKDIR", "str", "examples/nanogpt",
       "directory in the repo where runs start; CSV configs are relative to it"),
    _k(_S, "TRAIN_ENTRYPOINT", "str", "train.py", "script torchrun starts, relative to TRAIN_WORKDIR"),
    _k(_S, "SWEEP_MATCH", "str", "", "only rows whose run_id matches this regular expression"),
    _k(_S, "SWEEP_START_AT", "str", "", "submit the part of the sweep from this run_id on (as --index-offset)"),
    _k(_S, "SWEEP_LIMIT", "int", "", "submit at most this many rows as one part (as --num-jobs)", minimum=1),
    _k(_S, "SWEEP_FAIL_FAST", "bool", "0", "stop the sweep at the first failed row (default: continue)"),
    _k(_S, "POD_PRICE_PER_HOUR", "float", "",
       "the pod's price in USD per hour (a Lium pod's comes from the Lium API); empty = unknown (never $0)"),
    _k(_S, "BUDGET_USD", "float", "",
       "the executor starts no new row once spent + the running rows' projected rest reaches this (USD)"),
    _k(_S, "BUDGET_HARD", "bool", "0", "with BUDGET_USD: also stop the running rows at the cap"),
    _k(_S, "TEARDOWN_ON_FINISH", "enum", "keep",
       "flow's teardown when --teardown is not given: keep, stop, or delete (only a Lium pod this tool rented); "
       "delete also acts at the next sweep-status/sweep-watch after the campaign ended (fetch, verify, delete)",
       choices=("keep", "stop", "delete")),
    _k(_S, "SWEEP_CPU_SLOTS", "int", "1", "on a host without GPUs: slots to pack 1-slot rows onto", minimum=1,
       maximum=256),
    _k(_S, "WATCH_INTERVAL_SECS", "float", "2", "sweep-watch: seconds between refreshes (--interval overrides)"),
    _k(_S, "RUN_TIMEOUT_SECS", "int", "43200", "wall-clock limit per run attempt (0 = none, explicitly)", minimum=0),
    _k(_S, "RUN_STALL_SECS", "int", "1800", "a run printing nothing this long is stopped as stalled (0 = off)",
       minimum=0),
    _k(_S, "RUN_RETRIES", "int", "2", "retries for transient failures (nccl, lost, stalled), with backoff",
       minimum=0, maximum=10),
    _k(_S, "RUN_RETRY_BACKOFF_SECS", "int", "30", "first retry delay; doubles each retry", minimum=0, maximum=3600),
    _k(_S, "AUTO_BATCH_RETRY_ON_OOM", "bool", "1",
       "an oom run is retried (at most twice) with half the batch and double grad accumulation, resuming"),
    _k(_S, "OOM_BATCH_KEY", "str", "batch_size", "the trainer's batch-size override key"),
    _k(_S, "OOM_ACCUM_KEY", "str", "gradient_accumulation_steps", "the trainer's grad-accumulation override key"),
    _k(_S, "RUN_RESUME_OVERRIDE", "words", "resume=1",
       "override added when a run is retried, to resume from its checkpoint"),
    _k(_S, "RUN_OUT_MODE", "enum", "durable", "durable = train into the run dir; local_sync = fast local disk, rsynced",
       choices=("durable", "local_sync")),
    _k(_S, "RUN_OUT_LOCAL_ROOT", "podpath", "",
       "local_sync: where runs write; empty = ${OPS_REMOTE_REPO}/examples/nanogpt/out"),
    _k(_S, "SYNC_INTERVAL_SECS", "int", "60", "local_sync: rsync interval (and once at the end)", minimum=1),
    # --- evaluation stages and gates (issue 14: helpers/pod/stages.py, gates.py; checked in helpers/stage_keys.py)
    _k(_S, "EVAL_SMALL_CMD", "str", "",
       "after training: a small eval ({ckpt} {out_dir} {eval_json} placeholders; writes eval.json); empty = none"),
    _k(_S, "GATE_SMALL", "str", "", "gate on the small eval, metric<op>value (val_loss<3.6, val_loss<baseline*0.98); "
       "not met = row gated"),
    _k(_S, "EVAL_FULL_CMD", "str", "",
       "then the full eval (same placeholders), only if GATE_SMALL is met; empty = none"),
    _k(_S, "GATE_FULL", "str", "", "gate on the full eval, metric<op>value; not met = row gated"),
    _k(_S, "BASELINE_RUN", "str", "", "run id whose metrics a relative gate (baseline*0.98) compares with"),
    _k(_S, "EVAL_METRICS", "str", "",
       "metrics the evals write (comma/space list): kept in summary.json, gates checked against them; empty = all"),
    _k(_S, "EVAL_TIMEOUT_SECS", "int", "3600", "wall-clock limit of each eval stage (0 = none)", minimum=0),
    # --- slurm (SWEEP_EXECUTOR=slurm: the pod is a cluster's login node; checked in helpers/slurm_keys.py)
    _k(_S, "SWEEP_EXECUTOR", "enum", "tmux", "where rows run: tmux = on the pod itself; slurm = as Slurm job arrays",
       choices=("tmux", "slurm")),
    _k(_U, "SLURM_PARTITION", "str", "", "sbatch --partition for the rows; empty = the cluster's default"),
    _k(_U, "SLURM_ACCOUNT", "str", "", "sbatch --account charged for the rows; empty = your default account"),
    _k(_U, "SLURM_QOS", "str", "", "sbatch --qos for the rows; empty = the default QOS"),
    _k(_U, "SLURM_CONSTRAINT", "str", "", "sbatch --constraint (node features, e.g. a100|h100); empty = any node"),
    _k(_U, "SLURM_CPUS_PER_TASK", "int", "", "sbatch --cpus-per-task per row; empty = Slurm's default", minimum=1,
       maximum=1024),
    _k(_U, "SLURM_MEM", "str", "", "sbatch --mem per node, e.g. 32G; empty = Slurm's default"),
    _k(_U, "SLURM_GPUS_PER_NODE", "int", "", "sbatch --gpus-per-node; empty = the row's gpus column (none: 0)",
       minimum=0, maximum=64),
    _k(_U, "SLURM_TIME", "str", "", "sbatch --time (e.g. 2:00:00 or 1-00:00); empty = from the row's timeout"),
    _k(_U, "SLURM_ARRAY_PARALLELISM", "int", "", "at most this many rows of a campaign run at once (the % throttle)",
       minimum=1),
    _k(_U, "SLURM_EXTRA_ARGS", "words", "", "more sbatch options, e.g. --exclusive --nice=10 (checked, no shell)"),
    _k(_U, "SLURM_JOB_TEMPLATE", "path", "",
       "job-script template (local file); @WF_RUN_ROW@ in it becomes the row's command; empty = built in"),
    # --- fetch
    _k(_R, "LOCAL_ARTIFACTS_DIR", "path", "artifacts", "fetch-run/fetch-all copy runs into <this>/<run_id>/"),
    _k(_R, "FETCH_INCLUDE_CHECKPOINTS", "bool", "0", "fetch checkpoints too (*.pt *.pth *.ckpt *.safetensors)"),
    _k(_R, "PROMOTE_DIR", "path", "examples/nanogpt/config/promoted",
       "promote RUN_ID writes the run's resolved trainer config here (local; never overwritten without --force)"),
    _k(_R, "STALE_DAYS", "int", "14", "archive --list-only: a finished campaign older than this many days is stale",
       minimum=1),
    # --- experiment tracking (issue 13: helpers/tracking/, helpers/pod/tracking/)
    _k(_M, "MLFLOW_TRACKING_URI", "str", "",
       "MLflow server URL (or sqlite:/file store) the tool tracks every sweep row to; empty = tracking off"),
    _k(_M, "MLFLOW_EXPERIMENT", "str", "", "MLflow experiment of the campaigns; empty = the repo's name"),
    _k(_M, "MLFLOW_PARENT_RUN_ID", "str", "",
       "attach this submission's child runs to this existing parent run (empty = a new parent per campaign)"),
    _k(_M, "MLFLOW_TRACKING_USERNAME", "secret", "", "MLflow basic-auth user; empty = environment or "
       "~/.mlflow/credentials"),
    _k(_M, "MLFLOW_TRACKING_PASSWORD", "secret", "", "MLflow basic-auth password; empty = environment or "
       "~/.mlflow/credentials"),
    _k(_M, "MLFLOW_TRACKING_TOKEN", "secret", "", "MLflow bearer token; empty = environment or ~/.mlflow/credentials"),
    _k(_M, "TRACKING_WAIT_SECS", "int", "20",
       "the executor waits at most this long, once before its first row, for the rows' MLflow child runs"
       " (not when the server does not answer); a row without one starts without it",
       minimum=0, maximum=600),
    _k(_M, "TRACKING_FLUSH_SECS", "int", "600",
       "after the executor ends, the sidecar keeps retrying a down server this long (then: workflow.sh track)",
       minimum=0, maximum=86400),
    _k(_M, "WANDB_PROJECT", "str", "", "W&B project of the runs (SWEEP_WANDB=1); empty = the trainer's own"),
    _k(_M, "WANDB_ENTITY", "str", "", "W&B entity (user or team) of the runs; empty = the key's default"),
    _k(_M, "WANDB_MODE", "enum", "", "W&B mode of the runs: online, offline (then: workflow.sh wandb-sync), "
       "disabled; empty = W&B's default", choices=("", "online", "offline", "disabled")),
    _k(_M, "WANDB_VERIFY_SECS", "int", "300",
       "SWEEP_WANDB=1: a row's W&B run directory must appear within this long of its start", minimum=1),
    _k(_M, "WANDB_REQUIRED", "bool", "0",
       "SWEEP_WANDB=1: a row whose W&B run is not verified fails (class tracking); 0 = a warning"),
    # --- profiles
    _k("Profiles", "WORKFLOW_PROFILES_DIR", "path", "profiles",
       "where --profile NAME finds NAME.env (a profile may set _BASE=other to inherit)"),
)

KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}

CHECKPOINT_GLOBS = ("*.pt", "*.pth", "*.ckpt", "*.safetensors")


def is_passthrough(name: str) -> bool:
    return name.startswith(PASSTHROUGH_PREFIXES)
