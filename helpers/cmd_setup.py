"""Commands that check config and take a pod to CHECKED_OUT: validate, print-resolved-env,
pod-status, bootstrap, checkout, fsm-status, fsm-reset."""

from __future__ import annotations

from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.session import Session

# the config layer, the key table, git (localtree) and the state machine are imported where used:
# pod-status and fsm-status start without them


def cmd_validate(session: Session) -> int:
    cfg = session.cfg
    checked = [f"config OK: {cfg.env_file}" + (f" + profile {cfg.profile}" if cfg.profile else ""),
               f"target: {describe_target(session)}"]
    patterns = cfg.local_path("TASK_FATAL_PATTERNS_FILE")
    if patterns is not None:
        from helpers.cmd_tasks import load_user_patterns

        count = len(load_user_patterns(session))
        checked.append(f"fatal patterns OK: {patterns} ({count} patterns)")
    if cfg.text("LIUM_VOLUME"):
        from helpers.lium_up import parse_volume

        try:
            parse_volume(cfg.text("LIUM_VOLUME"))
        except WorkflowError as exc:
            raise WorkflowError(f"{cfg.source('LIUM_VOLUME')}: {exc.message}", ExitCode.USAGE) from None
        checked.append(f"LIUM_VOLUME OK: {cfg.text('LIUM_VOLUME')}")
    if cfg.target == "ssh":
        key = cfg.local_path("OPS_SSH_KEY")
        if key is not None and not key.is_file():
            raise WorkflowError(f"{cfg.source('OPS_SSH_KEY')}: OPS_SSH_KEY {key} does not exist", ExitCode.USAGE)
    from helpers.cmd_sweeps import csv_path_of, load_selected_rows

    csv_arg = getattr(session.options, "csv", None)
    if csv_arg or cfg.text("SWEEP_CSV"):
        csv_path = csv_path_of(session)
        if not csv_arg and not csv_path.is_file():
            raise WorkflowError(f"{cfg.source('SWEEP_CSV')}: SWEEP_CSV {csv_path} does not exist; fix the path, "
                                "or write one with workflow.sh sweep-csv-template", ExitCode.USAGE)
        rows, selected = load_selected_rows(session, csv_path)
        where = "--csv" if csv_arg else f"SWEEP_CSV, {cfg.source('SWEEP_CSV')}"
        checked.append(f"sweep CSV OK: {csv_path} ({len(rows)} rows, {len(selected)} selected; {where})")
    else:
        checked.append("sweep CSV: not checked (SWEEP_CSV is empty; set it or pass --csv FILE)")
    for line in checked:
        session.print(line)
    warning = empty_target_warning(session)
    if warning:
        session.note(warning)
    return 0


def empty_target_warning(session: Session) -> str:
    """A profile that leaves the target empty runs everything on this machine: say so (a profile for a
    Lium pod before pod-up has printed its LIUM_TARGET, or one that names no host)."""
    cfg = session.cfg
    if not cfg.profile or cfg.target != "local":
        return ""
    return (f"warning: profile {cfg.profile} leaves the target empty (LIUM_TARGET is empty and OPS_DEFAULT_HOST "
            f"is local, {cfg.source('OPS_DEFAULT_HOST')}), so commands run on this machine; set LIUM_TARGET "
            "(pod-up prints it) or OPS_DEFAULT_HOST in the profile or with --set")


def describe_target(session: Session) -> str:
    cfg = session.cfg
    if cfg.target == "local":
        return "local (this machine stands in for the pod; no SSH)"
    if cfg.target == "lium":
        return f"Lium pod {cfg.text('LIUM_TARGET')} (resolved through the Lium API, then SSH)"
    return f"ssh {cfg.text('OPS_DEFAULT_HOST')}"


def cmd_print_resolved_env(session: Session) -> int:
    from helpers.config import redact
    from helpers.keys import KEYS_BY_NAME

    cfg = session.cfg
    rows = [(key, redact(key, cfg.pod_values(include_secrets=True)[key]), setting.source)
            for key, setting in cfg.settings.items()]
    if session.as_json:
        session.emit_json({"env_file": str(cfg.env_file), "profile": cfg.profile, "target": cfg.target,
                           "keys": {k: {"value": v, "source": s} for k, v, s in rows}})
        return 0
    session.print(f"# {cfg.env_file}" + (f" + profile {cfg.profile}" if cfg.profile else "")
                  + f"; target: {cfg.target}")
    width = max(len(f"{k}={v}") for k, v, _ in rows)
    for key, value, source in rows:
        if key not in KEYS_BY_NAME:
            source += ", passed to runs"
        session.print(f"{key}={value}".ljust(width) + f"  # {source}")
    return 0


# ----------------------------------------------------------------------------- pod-status


def cmd_pod_status(session: Session) -> int:
    status = session.call("pod-status", timeout=120)
    if session.as_json:
        session.emit_json({"target": session.transport().description, **status})
        return 0
    from helpers.colour import enabled

    for line in render_pod_status(session.transport().description, status, enabled()):
        session.print(line)
    return 0


def render_pod_status(where: str, s: dict[str, Any], colour: bool = False) -> list[str]:
    from helpers.colour import paint

    def shown(text: str, state: str) -> str:
        return paint(text, state) if colour else text

    up = f", up {s['uptime_s'] // 3600}h{(s['uptime_s'] % 3600) // 60:02d}m" if s.get("uptime_s") else ""
    lines = [f"pod:      {where}  (host {s['hostname']}, user {s['user']}, {s['os']}{up})"]
    wf = s["workflow"]
    lines.append(f"state:    {shown(wf['state'], wf['state'])}"
                 + (f"  ({wf.get('reason', '')})" if wf.get("reason") else ""))
    tools = s["tools"]
    parts = [f"{tools['python3']}" + ("" if s["python3_venv"] else "  [no venv/ensurepip: install python3-venv]")]
    for name in ("tmux", "rsync", "git"):
        parts.append(f"{name}: {tools[name] or shown('MISSING (bootstrap installs it)', 'MISSING')}")
    lines.append("tools:    " + parts[0])
    lines += [f"          {p}" for p in parts[1:]]
    if s["gpus"]:
        for gpu in s["gpus"]:
            lines.append(f"gpu {gpu['index']}:    {gpu['name']}  {gpu['memory_used_mib']}/{gpu['memory_total_mib']} MiB"
                         f"  util {gpu['utilization_pct']}%")
    else:
        lines.append(f"gpus:     none ({s['gpu_note']})")
    for name, disk in s["disks"].items():
        free = f"{disk['free_gb']} GB free of {disk['total_gb']} GB" if "free_gb" in disk else disk.get("error", "?")
        lines.append(f"{name + ':':<9} {disk['configured']}  on {disk['mount']} ({disk['fstype']}), {free}")
    if s.get("volume"):
        vol = s["volume"]
        lines.append(f"volume:   /mnt is on {vol['mount']} ({vol['fstype']}, {vol['device']})")
    return lines


# ----------------------------------------------------------------------------- bootstrap / checkout


def _fsm_plan(command: str) -> str:
    from helpers.pod import fsm

    table = fsm.TRANSITIONS[command]
    moves = ", ".join(f"{a.value}->{b.value}" for a, b in table.items())
    return f"workflow state: {moves} (checked first; WF_FSM_ENFORCE)"


def plan_bootstrap(session: Session) -> list[str]:
    cfg = session.cfg
    plan = [f"on {describe_target(session)}:", "check tmux, rsync, git on PATH and "
            f"{cfg.text('REMOTE_PYTHON_BIN')} -c 'import venv, ensurepip'"]
    plan.append("install the missing ones: apt-get update && apt-get install -y ... (root only)"
                if cfg.flag("AUTO_INSTALL_PREREQS") else "missing ones are an error (AUTO_INSTALL_PREREQS=0)")
    if cfg.text("BOOTSTRAP_SCRIPT"):
        plan.append(f"run: bash {cfg.text('BOOTSTRAP_SCRIPT')}")
    if cfg.text("WANDB_SETUP_SCRIPT") and (cfg.flag("SWEEP_WANDB") or cfg.flag("RUN_WANDB_SETUP")):
        plan.append(f"run: bash {cfg.text('WANDB_SETUP_SCRIPT')}")
    if cfg.flag("SWEEP_WANDB"):
        plan.append("verify W&B credentials on the pod (~/.netrc api.wandb.ai or WANDB_API_KEY)")
    plan.append(f"write the resolved config to {cfg.text('REMOTE_ENV_PATH')} (mode 0600) if it changed")
    plan.append(_fsm_plan("bootstrap"))
    return plan


def cmd_bootstrap(session: Session) -> int:
    if session.dry_run:
        for line in plan_bootstrap(session):
            session.print(line)
        return 0
    from helpers.progress import Progress

    result = session.call("bootstrap", {"progress": Progress("bootstrap").on}, sync_env=True,
                          timeout=float((session.cfg.number("CHECKOUT_TIMEOUT_SECS") or 1800) * 3 + 120))
    installed = f"; installed {', '.join(result['installed'])}" if result["installed"] else ""
    ran = f"; ran {', '.join(result['ran'])}" if result["ran"] else ""
    session.print(f"bootstrap OK{installed}{ran}; state {result['state']}")
    return 0


def plan_checkout(session: Session) -> list[str]:
    cfg = session.cfg
    ref = (f"PR {cfg.text('CHECKOUT_PR')}" if cfg.text("CHECKOUT_PR")
           else f"branch {cfg.text('CHECKOUT_BRANCH') or '(remote default)'}")
    plan = [f"on {describe_target(session)}:",
            f"git clone/fetch {cfg.text('REPO_URL')} -> {cfg.text('OPS_REMOTE_REPO')}, {ref}"
            + ("; discard uncommitted changes" if cfg.flag("CHECKOUT_FORCE_CLEAN") else "; refuse if dirty")
            + " (a local patch an earlier CHECKOUT_PUSH_LOCAL=1 checkout applied, unchanged there, is reverted)"]
    if cfg.text("EXPECT_GIT_SHA"):
        plan.append(f"verify HEAD starts with {cfg.text('EXPECT_GIT_SHA')}")
    plan += plan_local_tree(session)
    plan.append(f"venv {cfg.text('VENV_DIR')} from {cfg.text('REMOTE_PYTHON_BIN')} --system-site-packages"
                + (" (rebuilt: VENV_RECREATE=1)" if cfg.flag("VENV_RECREATE") else ""))
    words = cfg.words("PIP_INSTALL_ARGS")
    install = words and words != ["none"]
    plan.append(f"pip install {' '.join(words)}" if install else "no pip install (PIP_INSTALL_ARGS=none)")
    plan.append("verify import torch" + (" and torch.cuda.is_available()" if cfg.flag("REQUIRE_CUDA") else ""))
    if cfg.flag("CHECK_DATA"):
        extra = " (download if missing)" if cfg.flag("DOWNLOAD_FINEWEB") else (
            " (build offline if missing)" if cfg.flag("DATA_BUILD_OFFLINE") else "")
        plan.append(f"validate FineWeb shards in {cfg.text('DATA_DIR')}{extra}")
    plan.append(f"write the resolved config to {cfg.text('REMOTE_ENV_PATH')} (mode 0600) if it changed")
    plan.append(_fsm_plan("checkout"))
    return plan


def plan_local_tree(session: Session) -> list[str]:
    """What checkout does with the local tree's changes (the same rules as the real command)."""
    from helpers.localtree import expected_commit, local_tree, make_patch, relation

    cfg = session.cfg
    tree = local_tree(cfg)
    if tree is None:
        return ["CHECKOUT_PUSH_LOCAL=1: refused: this checkout is not a git clone of REPO_URL"
                if cfg.flag("CHECKOUT_PUSH_LOCAL") else "local tree: not a clone of REPO_URL (not compared)"]
    head = f"HEAD {tree.head[:12]}" + (f" (branch {tree.branch})" if tree.branch else " (detached)")
    plan = [f"local tree {tree.root}: {head}"
            + (f"; uncommitted tracked changes: {tree.describe()}" if tree.changed else "; no uncommitted changes")]
    if cfg.flag("CHECKOUT_PUSH_LOCAL"):
        patch = make_patch(cfg, tree)
        plan.append("CHECKOUT_PUSH_LOCAL=1: no local changes to send" if patch is None else
                    f"apply the local patch on top of {tree.head[:12]} (git apply --index; refused unless the pod's "
                    f"commit is that one): {len(patch.files)} file(s) [{', '.join(patch.files)}], "
                    f"{len(patch.data)} bytes, sha256 {patch.sha256}; runs record the tree as dirty with that hash")
    elif tree.changed:
        plan.append(f"warning: the pod will not run your local changes to {tree.describe()} (commit and push them, "
                    "or set CHECKOUT_PUSH_LOCAL=1)")
    if tree.left_out:
        plan.append(f"never sent: {', '.join(tree.left_out)} (config files: the pod gets the resolved config)")
    sha, what = expected_commit(cfg, tree)
    differs = relation(tree, sha, f"what the pod will check out, {what}") if sha else None
    if differs:
        plan.append(f"warning: {differs}")
    plan.append("after the checkout: warn if local HEAD differs from the commit the pod checked out")
    return plan


def cmd_checkout(session: Session) -> int:
    from helpers.localtree import local_tree, make_patch, relation

    cfg = session.cfg
    if cfg.target != "local":
        cfg.require("checkout", "REPO_URL")
    if session.dry_run:
        for line in plan_checkout(session):
            session.print(line)
        return 0
    tree = local_tree(cfg)
    patch = None
    if cfg.flag("CHECKOUT_PUSH_LOCAL"):
        if tree is None:
            raise WorkflowError(f"{cfg.source('CHECKOUT_PUSH_LOCAL')}: CHECKOUT_PUSH_LOCAL=1 needs this checkout "
                                f"({cfg.project_root}) to be a git clone of REPO_URL; set it to 0, or fix REPO_URL",
                                ExitCode.USAGE)
        patch = make_patch(cfg, tree)
        if patch is None:
            session.note("checkout: CHECKOUT_PUSH_LOCAL=1: no local changes to send")
    timeout = float((cfg.number("CHECKOUT_TIMEOUT_SECS") or 1800) * 4)
    from helpers.progress import Progress

    args: dict[str, Any] = {"local_patch": patch.to_args()} if patch else {}
    args["progress"] = Progress("checkout").on  # a terminal: the pod adds a line every 5 s to long steps
    r = session.call("checkout", args, sync_env=True, timeout=timeout)
    if tree is not None and tree.changed and not cfg.flag("CHECKOUT_PUSH_LOCAL"):  # (a refusal is one line alone)
        session.note(f"warning: the pod will not run your local changes to {tree.describe()}: commit and push them, "
                     "or set CHECKOUT_PUSH_LOCAL=1 to send them as a patch")
    if tree is not None:
        differs = relation(tree, r["sha"])
        if differs:
            session.note(f"warning: {differs}")
    data = r["data"]
    data_text = (f"{data['train_shards']}+{data['val_shards']} shards" if data.get("checked") else "data not checked")
    applied = r.get("local_patch")
    extra = (f" + local patch ({len(applied['files'])} file(s), sha256 {applied['sha256']})" if applied else "")
    session.print(f"checkout OK: {r['ref']} at {r['sha'][:12]}{extra}; torch {r['torch']} "
                  f"(CUDA {'yes' if r['cuda'] else 'no'}); {data_text}; state {r['state']}")
    return 0


# ----------------------------------------------------------------------------- fsm


def cmd_fsm_status(session: Session) -> int:
    record = session.call("fsm-status", timeout=60)
    if session.as_json:
        session.emit_json(record)
        return 0
    exists = "" if record["exists"] else "  (no state file yet: a fresh pod)"
    session.print(f"state:    {record['state']}{exists}")
    if record.get("previous_state"):
        session.print(f"previous: {record['previous_state']}")
    session.print(f"reason:   {record['reason']}")
    if record.get("updated_utc"):
        session.print(f"updated:  {record['updated_utc']}")
    session.print(f"file:     {record['path']}")
    nxt = ", ".join(record["next"]) or "(fsm-reset only)"
    session.print(f"allowed:  {nxt}")
    history = record.get("history", [])[-5:]
    if history:
        session.print("history (last 5):")
        for h in history:
            session.print(f"  {h['utc']}  {h['command']:<14} {h['from']} -> {h['to']}  {h.get('reason', '')}")
    return 0


def cmd_fsm_reset(session: Session) -> int:
    from helpers.pod import fsm

    state = session.options.state.upper()
    if state not in fsm.State.__members__:
        raise WorkflowError(f"fsm-reset: unknown state {session.options.state!r}; use one of: "
                            f"{', '.join(fsm.State.__members__)}", ExitCode.USAGE)
    if session.dry_run:
        session.print(f"would set the workflow state on {describe_target(session)} to {state} "
                      f"(reason: {session.options.reason or 'manual reset'}) in {session.cfg.text('WF_STATE_FILE')}")
        return 0
    record = session.call("fsm-reset", {"state": state, "reason": session.options.reason}, timeout=120)
    session.print(f"state {record['previous_state']} -> {record['state']}")
    return 0
