"""Results of finished campaigns (read from the files a campaign leaves): leaderboard, compare, promote.

A row's record comes from ``_campaigns/<id>/manifest.json`` (its spec: config, seed, overrides), its run
dir's ``summary.json`` (verdict, timing, best/final metrics), ``metrics.jsonl`` (every metric the trainer
wrote), ``config.json`` (the config as the trainer resolved it) and ``run_manifest.json`` (git sha).
The leaderboard of a campaign is written to ``_campaigns/<id>/leaderboard.{csv,md}``, of all campaigns
to ``_leaderboard/leaderboard.{csv,md}``; promotions are kept in ``_campaigns/<id>/promotions.jsonl``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Dict, List, Optional, Tuple

from . import runs
from .campaigns import campaign_dir, root
from .context import Context
from .errors import ExitCode, WorkflowError
from .ids import check_id
from .jsonio import append_jsonl, read_json, utc_now, write_bytes, write_json

DEFAULT_METRIC = "val_loss"
PROMOTIONS = "promotions.jsonl"
CSV_COLUMNS = ("rank", "run_id", "campaign_id", "state", "metric", "value", "iter", "overrides", "promoted_as")


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def out_dir(path: str, done: Dict[str, Any]) -> str:
    """Where the trainer wrote (the run dir, or RUN_OUT_LOCAL_ROOT/<run_id> under local_sync)."""
    where = str(done.get("out_dir") or "")
    return where if where and os.path.isdir(where) else path


def metric_best(directory: str, metric: str, higher: bool) -> Tuple[Optional[float], Optional[Any], bool]:
    """(best value, its iter, whether the metric was written at all) over metrics.jsonl; NaN only when
    every value written was NaN."""
    best: Optional[float] = None
    at: Optional[Any] = None
    seen = False
    for record in runs.jsonl_records(os.path.join(directory, "metrics.jsonl")):
        value = _number(record.get(metric))
        if value is None:
            continue
        seen = True
        if math.isnan(value):
            if best is None:
                best, at = value, record.get("iter")
            continue
        if best is None or math.isnan(best) or (value > best if higher else value < best):
            best, at = value, record.get("iter")
    return best, at, seen


def _finished(ctx: Context, row: Dict[str, Any]) -> Optional[Tuple[str, Dict[str, Any]]]:
    path = runs.run_dir(ctx.outputs, str(row["run_id"]))
    done = runs.summary(path)
    if not done or done.get("spec_hash") != row.get("spec_hash"):
        return None
    return path, done


def promotions(campaign_path: str) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for record in runs.jsonl_records(os.path.join(campaign_path, PROMOTIONS)):
        found[str(record.get("run_id"))] = str(record.get("name") or "")
    return found


def campaign_rows(ctx: Context, campaign_id: str, path: str, metric: str, higher: bool) -> List[Dict[str, Any]]:
    manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest") or {}
    promoted = promotions(path)
    found = []
    for row in manifest.get("rows", []):
        got = _finished(ctx, row)
        if got is None:
            continue
        run_path, done = got
        stage, _, name = metric.rpartition(":")  # "eval_full:val_loss": the value that stage's eval wrote
        if stage:
            value = _number(((done.get("eval_metrics") or {}).get(stage) or {}).get(name))
            at, seen = None, value is not None
        else:
            value, at, seen = metric_best(out_dir(run_path, done), metric, higher)
        if not seen and not stage:  # no metrics.jsonl here (fetched elsewhere?): the summary's own records
            for record in (done.get("best_metrics"), done.get("final_metrics"), done.get("trainer_results")):
                if isinstance(record, dict) and _number(record.get(metric)) is not None:
                    value, at, seen = _number(record.get(metric)), record.get("iter"), True
                    break
        found.append({"run_id": row["run_id"], "campaign_id": campaign_id, "ok": bool(done.get("ok")),
                      "gated": done.get("state") == "gated",
                      "state": "ok" if done.get("ok") else str(done.get("state")), "value": value, "iter": at,
                      "seen": seen, "overrides": list(row.get("overrides") or []), "config": row.get("config"),
                      "seed": row.get("seed"), "failure_class": done.get("failure_class"),
                      "reason_line": done.get("reason_line"), "duration_s": done.get("duration_s"),
                      "promoted_as": promoted.get(str(row["run_id"]), "")})
    return found


def rank(rows: List[Dict[str, Any]], higher: bool) -> List[Dict[str, Any]]:
    """Ok rows with a number first (best first, then run_id), then ok rows whose value is NaN or
    missing, then failed rows (each group by run_id)."""
    def key(row: Dict[str, Any]) -> Tuple[int, float, str, str]:
        value = row["value"]
        if row.get("gated"):  # a gate not met (stages.py): after every ok row, before the failed ones
            usable = value is not None and not math.isnan(value)
            return (2, (-value if higher else value) if usable else math.inf, str(row["run_id"]),
                    str(row["campaign_id"]))
        if not row["ok"]:
            return (3, 0.0, str(row["run_id"]), str(row["campaign_id"]))
        if value is None or math.isnan(value):
            return (1, 0.0, str(row["run_id"]), str(row["campaign_id"]))
        return (0, -value if higher else value, str(row["run_id"]), str(row["campaign_id"]))

    ordered = sorted(rows, key=key)
    for number, row in enumerate(ordered, 1):
        row["rank"] = number
    return ordered


def _shown(value: Optional[float]) -> str:
    if value is None:
        return ""
    return "nan" if math.isnan(value) else f"{value:.6g}"


def render_csv(rows: List[Dict[str, Any]], metric: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row["rank"], row["run_id"], row["campaign_id"], row["state"], metric, _shown(row["value"]),
                         "" if row["iter"] is None else row["iter"], " ".join(row["overrides"]), row["promoted_as"]])
    return buffer.getvalue()


def render_md(rows: List[Dict[str, Any]], metric: str, title: str) -> str:
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"# Leaderboard: {title}", "", f"Ranked by best `{metric}`; failed rows and rows without a value last.",
             "", "| rank | run_id | state | " + metric + " | iter | overrides | promoted as |",
             "|---:|---|---|---:|---:|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(c) for c in (
            row["rank"], row["run_id"], row["state"], _shown(row["value"]), "" if row["iter"] is None else row["iter"],
            " ".join(row["overrides"]), row["promoted_as"])) + " |")
    return "\n".join(lines) + "\n"


def write_files(target: str, ordered: List[Dict[str, Any]], metric: str, higher: bool, title: str) -> Dict[str, str]:
    """leaderboard.csv and .md, and leaderboard.json (how it was ranked: a promotion redraws it the same way)."""
    os.makedirs(target, exist_ok=True)
    files = {}
    for name, text in (("leaderboard.csv", render_csv(ordered, metric)),
                       ("leaderboard.md", render_md(ordered, metric, title))):
        write_bytes(os.path.join(target, name), text.encode("utf-8"))
        files[name] = os.path.join(target, name)
    write_json(os.path.join(target, "leaderboard.json"), {"schema_version": 1, "metric": metric, "higher": higher,
                                                          "written_utc": utc_now()})
    return files


def default_metric(ctx: Context, places: List[Tuple[str, str]]) -> Tuple[str, bool]:
    """``eval_full:<metric of GATE_FULL, else val_loss>`` when a finished row ran its full eval (higher is better
    when that gate says so), else DEFAULT_METRIC."""
    from .gates import GateError, parse

    for _cid, path in reversed(places):
        manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest") or {}
        for row in manifest.get("rows", []):
            got = _finished(ctx, row)
            if got is None or "eval_full" not in (got[1].get("eval_metrics") or {}):
                continue
            text = str(row.get("gate_full") or (manifest.get("config") or {}).get("GATE_FULL") or "")
            try:
                gate = parse(text) if text else None
            except GateError:
                gate = None
            if gate is not None:
                return f"eval_full:{gate.metric}", gate.direction == "max"
            return "eval_full:val_loss", False
    return DEFAULT_METRIC, False


def _campaign_ids(ctx: Context) -> List[str]:
    base = root(ctx)
    names = sorted(os.listdir(base)) if os.path.isdir(base) else []
    return [n for n in names if os.path.isfile(os.path.join(base, n, "manifest.json"))]


def leaderboard(ctx: Context) -> Dict[str, Any]:
    args = ctx.args
    metric = str(args.get("metric") or "")
    higher = bool(args.get("higher"))
    if args.get("all"):
        ids = _campaign_ids(ctx)
        places = [(cid, os.path.join(root(ctx), cid)) for cid in ids]
        target, title = os.path.join(ctx.outputs, "_leaderboard"), "all campaigns"
    else:
        cid, path = campaign_dir(ctx, args.get("campaign"))
        places, target, title = [(cid, path)], path, f"campaign {cid}"
    if not metric:  # the last full-eval metric (stages.py), else the best val loss
        metric, default_higher = default_metric(ctx, places)
        higher = higher or default_higher
    rows: List[Dict[str, Any]] = []
    for cid, path in places:
        rows.extend(campaign_rows(ctx, cid, path, metric, higher))
    if rows and not any(r["seen"] for r in rows):
        raise WorkflowError(f"leaderboard: no finished run of {title} wrote the metric {metric!r} "
                            f"(metrics.jsonl); pick one the trainer writes with --metric", ExitCode.USAGE)
    ordered = rank(rows, higher)
    files = {} if args.get("plan_only") else write_files(target, ordered, metric, higher, title)
    shown = [{k: (None if k == "value" and r[k] is not None and math.isnan(r[k]) else r[k])
              for k in ("rank", "run_id", "campaign_id", "state", "value", "iter", "overrides", "promoted_as",
                        "failure_class", "reason_line")} | {"nan": r["value"] is not None and math.isnan(r["value"])}
             for r in ordered]
    return {"title": title, "metric": metric, "higher_is_better": higher, "rows": shown, "files": files}


# ----------------------------------------------------------------------------- one run's facts


def _owning(ctx: Context, run_id: str) -> Tuple[str, Dict[str, Any], str, Dict[str, Any]]:
    """(run dir, summary, campaign dir, manifest row) of a finished run; unknown: exit 5."""
    run_id = check_id(run_id, "run id")
    path = runs.run_dir(ctx.outputs, run_id)
    done = runs.summary(path) if runs.owner(path) else None
    if not done:
        raise WorkflowError(f"no finished sweep run {run_id!r} on the pod (see workflow.sh sweep-status)",
                            ExitCode.NOT_FOUND)
    cid = str(done.get("campaign_id") or "")
    cpath = os.path.join(root(ctx), cid)
    manifest = read_json(os.path.join(cpath, "manifest.json"), "campaign manifest") or {}
    row: Dict[str, Any] = next((r for r in manifest.get("rows", []) if r.get("run_id") == run_id), {})
    return path, done, cpath, row


def run_facts(ctx: Context, run_id: str) -> Dict[str, Any]:
    path, done, cpath, row = _owning(ctx, run_id)
    return facts_of(run_id, path, done, row, os.path.isdir(cpath))


def facts_of(run_id: str, path: str, done: Dict[str, Any], row: Dict[str, Any], campaign_known: bool
             ) -> Dict[str, Any]:
    """A finished run's config, provenance and metrics from its run dir: on the pod, or a fetched copy
    (LOCAL_ARTIFACTS_DIR/<run_id>/, whose out_dir files were fetched into it)."""
    where = out_dir(path, done)
    trainer = read_json(os.path.join(where, "config.json"), "trainer config") if os.path.isfile(
        os.path.join(where, "config.json")) else None
    found = read_json(os.path.join(path, "run_manifest.json"), "run manifest")
    made: Dict[str, Any] = found if isinstance(found, dict) else {}
    git: Dict[str, Any] = made["git"] if isinstance(made.get("git"), dict) else {}
    metrics: Dict[str, Any] = {}
    best = done.get("best_metrics") or {}
    final = done.get("final_metrics") or {}
    for name, value in sorted(final.items()):
        if _number(value) is not None and name != "iter":
            metrics[f"final_{name}"] = value
    for name, value in sorted(best.items()):
        if _number(value) is not None and name != "iter":
            metrics[f"best_{name}"] = value
    if best.get("iter") is not None:
        metrics["best_iter"] = best.get("iter")
    for stage, values in sorted((done.get("eval_metrics") or {}).items()):  # what its eval stages wrote
        for name, value in sorted((values or {}).items()):
            if _number(value) is not None:
                metrics[f"{stage}:{name}"] = value
    metrics["duration_s"] = done.get("duration_s")
    metrics["attempts"] = done.get("attempts")
    return {"run_id": run_id, "campaign_id": done.get("campaign_id"), "ok": bool(done.get("ok")),
            "state": done.get("state"), "config_file": row.get("config"), "seed": row.get("seed"),
            "overrides": list(row.get("overrides") or []), "trainer_config": trainer if isinstance(trainer, dict)
            else None, "git_sha": git.get("git_sha") or made.get("git_sha"), "dirty": git.get("dirty"),
            "metrics": metrics, "campaign_known": campaign_known}


def compare(ctx: Context) -> Dict[str, Any]:
    ids = [str(r) for r in ctx.args.get("run_ids") or []]
    return {"runs": [run_facts(ctx, run_id) for run_id in ids]}


def promote_source(ctx: Context) -> Dict[str, Any]:
    facts = run_facts(ctx, str(ctx.args.get("run_id") or ""))
    if facts["trainer_config"] is None and facts["config_file"]:  # the trainer wrote none: the config file
        repo = os.path.join(ctx.path("OPS_REMOTE_REPO"), ctx.get("TRAIN_WORKDIR"))
        try:
            with open(os.path.join(repo, str(facts["config_file"])), encoding="utf-8") as handle:
                facts["config_text"] = handle.read()
        except OSError as exc:
            raise WorkflowError(f"promote: run {facts['run_id']} left no config.json and its config file "
                                f"{facts['config_file']} cannot be read on the pod ({exc.strerror})",
                                ExitCode.FAILED) from None
    return facts


def promote_record(ctx: Context) -> Dict[str, Any]:
    _, done, cpath, _ = _owning(ctx, str(ctx.args.get("run_id") or ""))
    done = done or {}
    if not os.path.isdir(cpath):
        raise WorkflowError(f"campaign {done.get('campaign_id')} of run {done.get('run_id')} is not on the pod "
                            "(archived?)", ExitCode.NOT_FOUND)
    record = {"run_id": done.get("run_id"), "name": str(ctx.args.get("name") or ""),
              "path": str(ctx.args.get("path") or ""), "promoted_utc": utc_now(), "force": bool(ctx.args.get("force"))}
    append_jsonl(os.path.join(cpath, PROMOTIONS), record)
    settings = read_json(os.path.join(cpath, "leaderboard.json"), "leaderboard settings")
    if isinstance(settings, dict):  # the campaign has a leaderboard on the pod: shown with the promotion now
        metric, higher = str(settings.get("metric") or DEFAULT_METRIC), bool(settings.get("higher"))
        cid = str(done.get("campaign_id"))
        write_files(cpath, rank(campaign_rows(ctx, cid, cpath, metric, higher), higher), metric, higher,
                    f"campaign {cid}")
    return record
