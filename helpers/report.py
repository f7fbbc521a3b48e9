"""report: a self-contained HTML report of a fetched campaign (LOCAL_ARTIFACTS_DIR/<run_id>/ of its runs).

It needs no pod: the leaderboard, loss curves (train and val per row, PNG, matplotlib Agg), failures with
their class, reason and last log lines, and durations all come from the fetched files. The PNGs are
written beside ``report.html`` and embedded in it (data URIs), so the file alone shows everything,
with no network. ``--out`` defaults to LOCAL_ARTIFACTS_DIR/_reports/<campaign>/; a folder that is not
empty and was not made by report is refused.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.pod.results import metric_best, rank, render_csv, render_md
from helpers.pod.runs import jsonl_records
from helpers.render import duration
from helpers.session import Session

MARKER = ".workflow-report"
CONTEXT_LINES = 8


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fetched_runs(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every fetched run dir with the runner's summary.json."""
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        done = _read(path / "summary.json") if path.is_dir() and not path.name.startswith("_") else None
        if isinstance(done, dict) and "spec_hash" in done and "attempt_history" in done:
            found.append((path, done))
    return found


def pick_campaign(found: list[tuple[Path, dict[str, Any]]], wanted: str | None, root: Path) -> str:
    campaigns = {str(d.get("campaign_id")) for _, d in found}
    if wanted:
        if wanted not in campaigns:
            raise WorkflowError(f"report: campaign {wanted} is not fetched (no run of it in {root}); run "
                                f"workflow.sh fetch-all --campaign {wanted} first", ExitCode.NOT_FOUND)
        return wanted
    if not campaigns:
        raise WorkflowError(f"report: no fetched run in {root}; run workflow.sh fetch-all first", ExitCode.NOT_FOUND)
    return max(campaigns)  # ids start with their UTC creation time


def _context(path: Path, done: dict[str, Any]) -> list[str]:
    log = path / "attempts" / str(done.get("attempt")) / "run.log"
    if not log.is_file():
        log = path / "run.log"
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    lines = [line for line in lines if line.strip()]
    reason = str(done.get("reason_line") or "")
    at = next((i for i, line in enumerate(lines) if reason and reason in line), None)
    if at is None:  # the reason is not a log line (a timeout, a stall): the log's last lines
        return lines[-CONTEXT_LINES:]
    return lines[max(0, at - CONTEXT_LINES // 2):at + CONTEXT_LINES // 2]


def collect(found: list[tuple[Path, dict[str, Any]]], campaign: str) -> list[dict[str, Any]]:
    rows = []
    for path, done in found:
        if done.get("campaign_id") != campaign:
            continue
        made = _read(path / "run_manifest.json") or {}
        value, at, _ = metric_best(str(path), "val_loss", False)
        curve: dict[str, list[tuple[float, float]]] = {"train_loss": [], "val_loss": []}
        for record in jsonl_records(str(path / "metrics.jsonl")):
            step = record.get("iter")
            for key, points in curve.items():
                if isinstance(record.get(key), (int, float)) and isinstance(step, (int, float)):
                    points.append((float(step), float(record[key])))
        rows.append({"run_id": done.get("run_id") or path.name, "campaign_id": campaign, "ok": bool(done.get("ok")),
                     "state": "ok" if done.get("ok") else str(done.get("state")), "value": value, "iter": at,
                     "overrides": list((made.get("csv_row") or {}).get("overrides") or []),
                     "duration_s": done.get("duration_s"), "attempts": done.get("attempts"),
                     "failure_class": done.get("failure_class"), "reason_line": done.get("reason_line"),
                     "context": [] if done.get("ok") else _context(path, done), "curve": curve,
                     "promoted_as": "", "stages": list(done.get("stages") or []),
                     "gated": done.get("state") == "gated",
                     "cost": done["cost"].get("usd") if isinstance(done.get("cost"), dict) else None})
    return rank(rows, higher=False)


def plot(rows: list[dict[str, Any]], out: Path) -> dict[str, str]:
    """One PNG per row with points (train and val loss by iter); one figure reused, so 100 rows stay fast."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise WorkflowError("report: matplotlib is needed for the loss curves; install it into the venv "
                            "(pip install matplotlib, or the project's [report] extra)", ExitCode.USAGE) from None
    figure, axes = plt.subplots(figsize=(4.8, 3.0), dpi=80)
    lines = {key: axes.plot([], [], marker="o", markersize=3, color=colour, label=key.replace("_", " "))[0]
             for key, colour in (("train_loss", "tab:blue"), ("val_loss", "tab:orange"))}
    axes.set_xlabel("iter")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    for axis in (axes.xaxis, axes.yaxis):  # fewer tick labels: text is most of the drawing time
        axis.set_major_locator(MaxNLocator(5))
    made = {}
    for row in rows:  # the same artists, new data: far cheaper than a new figure per row
        if not any(row["curve"].values()):
            continue
        for key, line in lines.items():
            points = row["curve"][key]
            line.set_data([p[0] for p in points], [p[1] for p in points])
        axes.relim()
        axes.autoscale_view()
        # the key in the title: one text instead of a legend box (a third of the time per PNG)
        axes.set_title(f"{row['run_id']} ({row['state']}): train blue, val orange", fontsize=9)
        name = f"loss-{row['run_id']}.png"
        figure.savefig(out / name, pil_kwargs={"compress_level": 1})
        made[row["run_id"]] = name
    plt.close(figure)
    return made


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return html.escape(str(value))


def _gate_cells(gate: Any) -> tuple[str, str, str]:
    """(metric=value, threshold with its op, met / not met / the problem) of a stage's gate decision."""
    if not isinstance(gate, dict):
        return "", "no gate", ""
    value = gate.get("value")
    limit = gate.get("threshold")
    shown = f"{_cell(gate.get('metric'))}={_cell(value) if value is not None else 'missing'}"
    bound = f"{_cell(gate.get('op'))} {_cell(limit) if limit is not None else 'unknown'}"
    if gate.get("baseline_run"):
        bound += f" (baseline {_cell(gate.get('baseline_run'))} = {_cell(gate.get('baseline_value'))})"
    if gate.get("problem"):
        return shown, bound, f"undecided: {_cell(gate['problem'])}"
    return shown, bound, "met" if gate.get("passed") else "not met"


def render_stages(rows: list[dict[str, Any]]) -> list[str]:
    """The stages of each row that has some: stage, state, metric=value, threshold, met/not met."""
    staged = [r for r in rows if r.get("stages")]
    parts = ["<h2>Stages and gates</h2>"]
    if not staged:
        return parts + ["<p>no row has stages</p>"]
    parts.append("<table id='stages'><tr><th>run</th><th>stage</th><th>state</th><th>metric=value</th>"
                 "<th>threshold</th><th>gate</th><th>duration</th></tr>")
    for r in staged:
        for stage in r["stages"]:
            if not isinstance(stage, dict):
                continue
            shown, bound, verdict = _gate_cells(stage.get("gate"))
            if not verdict and stage.get("state") not in ("success", "gated"):
                verdict = f"failed: {_cell(stage.get('failure_class'))}"  # the stage itself failed
            retried = [str(t.get("failure_class")) for t in stage.get("retries") or [] if isinstance(t, dict)]
            state = _cell(stage.get("state")) + (f" (retried after {_cell(', '.join(retried))})" if retried else "")
            parts.append(f"<tr class='stage-{_cell(stage.get('state'))}'>" + "".join(f"<td>{c}</td>" for c in (
                _cell(r["run_id"]), _cell(stage.get("name")), state, shown, bound, verdict,
                html.escape(duration(stage.get("duration_s"))))) + "</tr>")
    parts.append("</table>")
    return parts


def render_gated(rows: list[dict[str, Any]]) -> list[str]:
    """Rows a gate stopped: not failures, listed apart with the gate that was not met."""
    gated = [r for r in rows if r["state"] == "gated"]
    parts = ["<h2>Gated</h2>"]
    if not gated:
        return parts + ["<p>none</p>"]
    parts.append("<ul id='gated'>")
    for r in gated:
        last = next((s for s in reversed(r.get("stages") or []) if isinstance(s, dict)
                     and s.get("state") == "gated"), {})
        shown, bound, verdict = _gate_cells(last.get("gate"))
        parts.append(f"<li id='gated-{html.escape(r['run_id'])}'>{html.escape(r['run_id'])}: stage "
                     f"{_cell(last.get('name'))}: {shown} {bound}: {verdict}</li>")
    parts.append("</ul>")
    return parts


def render(campaign: str, rows: list[dict[str, Any]], images: dict[str, bytes]) -> str:
    e = html.escape
    ok = sum(1 for r in rows if r["ok"])
    gated = sum(1 for r in rows if r["state"] == "gated")
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>Report: campaign {e(campaign)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}pre{background:#f4f4f4;padding:6px}"
             ".plots img{margin:4px;border:1px solid #ddd}</style></head><body>",
             f"<h1>Campaign {e(campaign)}</h1>",
             f"<p>{len(rows)} finished run(s): {ok} ok, {gated} gated, {len(rows) - ok - gated} failed."
             " Ranked by best val_loss; gated rows after the ok ones, failed rows last.</p>", "<h2>Leaderboard</h2>",
             "<table id='leaderboard'><tr><th>rank</th><th>run</th><th>state</th><th>best val_loss</th><th>iter</th>"
             "<th>overrides</th><th>duration</th><th>attempts</th><th>cost (USD)</th></tr>"]
    for r in rows:
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            r["rank"], _cell(r["run_id"]), _cell(r["state"]), _cell(r["value"]), _cell(r["iter"]),
            _cell(" ".join(r["overrides"])), e(duration(r["duration_s"])), _cell(r["attempts"]),
            _cell(r["cost"]) or "unknown")) + "</tr>")
    parts.append("</table>")
    parts.extend(render_stages(rows))
    parts.extend(render_gated(rows))
    failed = [r for r in rows if not r["ok"] and r["state"] != "gated"]  # a gate not met is no failure
    parts.append("<h2>Failures</h2>")
    if not failed:
        parts.append("<p>none</p>")
    for r in failed:
        parts.append(f"<h3 id='fail-{e(r['run_id'])}'>{e(r['run_id'])}: {_cell(r['failure_class'])}</h3>"
                     f"<p>{_cell(r['reason_line'])}</p><pre>{e(chr(10).join(r['context']))}</pre>")
    parts.append("<h2>Loss curves</h2><div class='plots'>")
    for r in rows:
        data = images.get(r["run_id"])
        if data:
            parts.append(f"<img alt='loss curves of {e(r['run_id'])}' width='384' height='240' "
                         f"src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    parts.append("</div></body></html>")
    return "\n".join(parts) + "\n"


def out_dir(session: Session, campaign: str, root: Path) -> Path:
    wanted = session.options.out
    out = Path(wanted).expanduser() if wanted else root / "_reports" / campaign
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise WorkflowError(f"report: {out} exists and was not made by workflow.sh report; give another --out",
                            ExitCode.REFUSED)
    return out


def cmd_report(session: Session) -> int:
    root = session.cfg.local_path("LOCAL_ARTIFACTS_DIR")
    assert root is not None
    found = fetched_runs(root)
    campaign = pick_campaign(found, session.options.campaign, root)
    rows = collect(found, campaign)
    out = out_dir(session, campaign, root)
    if session.dry_run:
        session.print(f"would write {out / 'report.html'} and {sum(1 for r in rows if any(r['curve'].values()))} "
                      f"PNG(s) for campaign {campaign} ({len(rows)} run(s))")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(f"campaign {campaign}\n")
    names = plot(rows, out)
    images = {run_id: (out / name).read_bytes() for run_id, name in names.items()}
    for name, text in (("leaderboard.csv", render_csv(rows, "val_loss")),
                       ("leaderboard.md", render_md(rows, "val_loss", f"campaign {campaign} (fetched)"))):
        (out / f".{name}.partial").write_text(text, encoding="utf-8")
        os.replace(out / f".{name}.partial", out / name)
    target = out / "report.html"
    temp = out / ".report.html.partial"
    temp.write_text(render(campaign, rows, images), encoding="utf-8")
    os.replace(temp, target)
    if session.as_json:
        session.emit_json({"campaign_id": campaign, "html": str(target), "pngs": sorted(str(out / n)
                                                                                     for n in names.values()),
                           "runs": len(rows)})
        return 0
    session.print(f"wrote {target} ({len(rows)} run(s), {len(names)} loss-curve PNG(s)) for campaign {campaign}")
    return 0
