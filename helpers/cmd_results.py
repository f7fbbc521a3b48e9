"""Results of finished runs: leaderboard (ranked rows), compare (config difference + metrics), promote
(a run's resolved trainer config into PROMOTE_DIR, with its provenance)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.pod.jsonio import utc_now
from helpers.render import table
from helpers.session import Session

MISSING = "-"


def _value(row: dict[str, Any]) -> str:
    if row.get("nan"):
        return "nan"
    return "" if row.get("value") is None else f"{row['value']:.6g}"


def cmd_leaderboard(session: Session) -> int:
    o = session.options
    if o.all and o.campaign:
        raise WorkflowError("leaderboard: give --campaign ID or --all, not both", ExitCode.USAGE)
    args = {"campaign": o.campaign, "all": bool(o.all), "metric": o.metric, "higher": bool(o.higher_is_better),
            "plan_only": session.dry_run}
    reply = session.call("leaderboard", args, timeout=300)
    if session.as_json:
        session.emit_json(reply)
        return 0
    rows = [[str(r["rank"]), r["run_id"], r["state"], _value(r), "" if r["iter"] is None else str(r["iter"]),
             " ".join(r["overrides"]) or MISSING, r["promoted_as"]] for r in reply["rows"]]
    if not rows:
        session.print(f"no finished run in {reply['title']} yet (see workflow.sh sweep-status)")
        return 0
    direction = "higher" if reply["higher_is_better"] else "lower"
    session.print(f"leaderboard of {reply['title']}: best {reply['metric']} ({direction} is better)")
    from helpers.colour import enabled, painter

    for line in table(["RANK", "RUN", "STATE", reply["metric"].upper(), "ITER", "OVERRIDES", "PROMOTED"], rows,
                      painter(2, enabled())):
        session.print(line)
    for name, path in sorted(reply["files"].items()):
        session.print(f"wrote {name} on the pod: {path}")
    if session.dry_run:
        session.print("(--dry-run: leaderboard.csv and leaderboard.md not written)")
    return 0


# ----------------------------------------------------------------------------- compare


def _flat_config(run: dict[str, Any]) -> dict[str, str]:
    """The run's config as the trainer saw it; without a config.json: the config file and overrides."""
    config = run.get("trainer_config")
    if isinstance(config, dict):
        return {str(k): json.dumps(v) if not isinstance(v, str) else v for k, v in config.items()}
    flat = {"config": str(run.get("config_file")), "seed": str(run.get("seed"))}
    for word in run.get("overrides") or []:
        key, _, value = str(word).lstrip("-").partition("=")
        flat[key] = value
    return flat


def _fetched_facts(session: Session, ids: list[str]) -> list[dict[str, Any]] | None:
    """Every run's facts from LOCAL_ARTIFACTS_DIR/<run_id>/ when each one was fetched (its summary.json
    is there), else None (no pod call is needed when they all are)."""
    from helpers.pod import runs
    from helpers.pod.ids import check_id
    from helpers.pod.jsonio import read_json
    from helpers.pod.results import facts_of

    root = session.cfg.local_path("LOCAL_ARTIFACTS_DIR")
    if root is None or not root.is_dir():
        return None
    found = []
    for run_id in ids:
        path = str(root / check_id(run_id, "run id"))
        done = runs.summary(path) if os.path.isfile(os.path.join(path, "summary.json")) else None
        if not done:
            return None
        made = read_json(os.path.join(path, "run_manifest.json"), "run manifest")
        row = (made.get("csv_row") if isinstance(made, dict) else None) or {}
        found.append(facts_of(run_id, path, done, row if isinstance(row, dict) else {}, True))
    return found


def cmd_compare(session: Session) -> int:
    ids = list(session.options.run_ids)
    if len(ids) < 2:
        raise WorkflowError("compare: give at least two run ids (compare RUN_A RUN_B [...])", ExitCode.USAGE)
    if len(set(ids)) != len(ids):
        raise WorkflowError("compare: a run id is given twice", ExitCode.USAGE)
    runs, source = _fetched_facts(session, ids), "fetched artifacts"
    if runs is None:  # not every run is fetched: the pod answers
        runs, source = session.call("compare", {"run_ids": ids}, timeout=300)["runs"], "the pod"
    configs = [_flat_config(r) for r in runs]
    keys = sorted(set().union(*configs) - {"out_dir"})
    differ = [k for k in keys if len({c.get(k, MISSING) for c in configs}) > 1]
    metric_names = sorted(set().union(*(r["metrics"] for r in runs)))
    if session.as_json:
        session.emit_json({"runs": [r["run_id"] for r in runs],
                           "config_diff": {k: [c.get(k) for c in configs] for k in differ},
                           "metrics": {m: [r["metrics"].get(m) for r in runs] for m in metric_names},
                           "states": [r["state"] for r in runs], "source": source})
        return 0
    session.print(f"from {source}")
    headers = ["KEY", *ids]
    session.print("config difference (keys that differ; out_dir left out):")
    if differ:
        for line in table(headers, [[k, *(c.get(k, MISSING) for c in configs)] for k in differ]):
            session.print("  " + line)
    else:
        session.print("  none: the runs' configs are the same")
    session.print("metrics:")
    rows = [["state", *(str(r["state"]) for r in runs)]]
    for name in metric_names:
        rows.append([name, *(_fmt(r["metrics"].get(name)) for r in runs)])
    for line in table(["METRIC", *ids], rows):
        session.print("  " + line)
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ----------------------------------------------------------------------------- promote


def promote_name(run_id: str, name: str | None) -> str:
    """The promoted file's name: NAME (or the run id) + .py; a path in it is refused."""
    text = run_id if name is None else name
    if not text or "/" in text or "\\" in text or ".." in text or text.startswith(".") or "\0" in text:
        raise WorkflowError(f"promote: --as {text[:60]!r} is not a plain file name (no path separator, no '..', "
                            "not hidden); give a name like best_lr", ExitCode.USAGE)
    return text if text.endswith(".py") else text + ".py"


def render_promoted(facts: dict[str, Any], when: str) -> str:
    metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(facts["metrics"].items()) if v is not None)
    header = [
        f"# promoted by workflow.sh promote on {when}",
        f"# campaign: {facts.get('campaign_id')}   run: {facts['run_id']}   state: {facts.get('state')}",
        f"# git sha: {facts.get('git_sha') or 'unknown'}{'  (dirty tree)' if facts.get('dirty') else ''}",
        f"# metrics: {metrics or 'none recorded'}",
        f"# from config file {facts.get('config_file')} with overrides: {' '.join(facts['overrides']) or 'none'}",
    ]
    config = facts.get("trainer_config")
    if isinstance(config, dict):
        header.append("# below: the config as the trainer resolved it (its config.json); out_dir left out")
        body = [f"{key} = {value!r}" for key, value in config.items() if key != "out_dir"]
    else:
        header.append("# below: the config file, then the run's overrides (the trainer wrote no config.json)")
        body = [str(facts.get("config_text") or "").rstrip("\n"), "", "# the run's overrides"]
        for word in facts["overrides"]:
            key, _, value = str(word).lstrip("-").partition("=")
            body.append(f"{key} = {_literal(value)}")
    return "\n".join([*header, "", *body]) + "\n"


def _literal(text: str) -> str:
    """An override's value as Python: a number or a bool stays one, anything else is a string."""
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return repr(text)
    return repr(value) if isinstance(value, (int, float, bool)) else repr(text)


def _write_new(path: Path, text: str, replace: bool) -> None:
    """Atomically (temp + rename); without ``replace`` a file that appeared meanwhile is kept (link fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise WorkflowError(f"promote: {path} exists; not overwritten (add --force to replace it)",
                                    ExitCode.REFUSED) from None
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def cmd_promote(session: Session) -> int:
    o = session.options
    from helpers.pod.ids import check_id

    run_id = check_id(o.run_id, "run id")
    name = promote_name(run_id, o.name)
    directory = session.cfg.local_path("PROMOTE_DIR")
    if directory is None:
        raise WorkflowError("promote: PROMOTE_DIR is empty; set it in workflow.env", ExitCode.USAGE)
    target = directory / name
    if target.exists() and not o.force:
        raise WorkflowError(f"promote: {target} exists; not overwritten (add --force to replace it)",
                            ExitCode.REFUSED)
    facts = session.call("promote-source", {"run_id": run_id}, timeout=120)
    if not facts["ok"]:
        raise WorkflowError(f"promote: run {run_id} did not succeed (state {facts['state']}); only a successful "
                            "run is promoted", ExitCode.REFUSED)
    text = render_promoted(facts, utc_now())
    if session.dry_run:
        session.print(f"would write {target} ({'replacing it' if target.exists() else 'new'}) from run {run_id} "
                      f"of campaign {facts['campaign_id']}, and record it in that campaign's leaderboard")
        return 0
    _write_new(target, text, bool(o.force))
    session.call("promote-record", {"run_id": run_id, "name": name, "path": str(target), "force": bool(o.force)},
                 timeout=120)
    if session.as_json:
        session.emit_json({"run_id": run_id, "campaign_id": facts["campaign_id"], "path": str(target)})
        return 0
    session.print(f"promoted run {run_id} (campaign {facts['campaign_id']}) to {target}; recorded in its "
                  "leaderboard (workflow.sh leaderboard)")
    return 0
