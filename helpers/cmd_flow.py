"""flow: pod-up -> bootstrap -> checkout -> sweep -> wait -> fetch -> report -> teardown in one command.

Each phase is the workflow.sh command a user would run by hand, run in this process (the same
parsing, config, errors and exit codes), printed as it starts and ends with its status and duration.
The first failed phase stops the flow with that phase's exit code and the command that continues it;
running flow again continues from the pod's workflow state (done phases are not redone) and from
.workflow/flow-state.json (the pod flow rented, the campaign it started). The plan is pure
(helpers/flow_plan.py); this module gathers the facts, prints the plan, and executes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shlex
import time
from typing import Any

from helpers import rented
from helpers.errors import ExitCode, WorkflowError
from helpers.flow_plan import PHASES, FlowFacts, FlowOptions, Phase, check_choice, plan_flow, pod_uuid, will_rent
from helpers.session import Session

ENTRY = "infra_scripts/workflow.sh"
WITH_CAMPAIGN = ("sweep-watch", "fetch-all", "report", "sweep-stop")


def flow_options(session: Session) -> FlowOptions:
    o = session.options
    teardown = o.teardown or session.cfg.text("TEARDOWN_ON_FINISH") or "keep"  # the key: flow's default
    return FlowOptions(provision=check_choice("provision", o.provision), sweep=check_choice("sweep", o.sweep),
                       wait=bool(o.wait), fetch=check_choice("fetch", o.fetch), report=bool(o.report),
                       teardown=check_choice("teardown", teardown),
                       manage=bool(o.manage), yes=bool(o.yes),
                       on_finish=session.cfg.text("TEARDOWN_ON_FINISH") or "keep")


class Runner:
    """Runs workflow.sh commands in this process with the flow's own global flags."""

    def __init__(self, session: Session) -> None:
        self.session = session
        cfg, o = session.cfg, session.options
        self.globals = ["--env", str(cfg.env_file)]
        self.globals += ["--profile", o.profile] if getattr(o, "profile", None) else []
        for item in getattr(o, "overrides", None) or []:
            self.globals += ["--set", item]
        self.globals += ["--debug"] if getattr(o, "debug", False) else []
        self.lium_target = ""  # --set LIUM_TARGET=<uuid> for a pod flow rented

    def argv(self, words: list[str]) -> list[str]:
        extra = ["--set", f"LIUM_TARGET={self.lium_target}"] if self.lium_target else []
        return [*self.globals, *extra, *words]

    def shown(self, words: list[str]) -> str:
        return shlex.join([ENTRY, *self.argv(words)])

    def run(self, words: list[str], capture: bool = False) -> tuple[int, str]:
        from helpers.cli import main

        if not capture:
            return main(self.argv(words)), ""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(self.argv(words))
        return code, out.getvalue()

    def json(self, words: list[str]) -> tuple[int, Any]:
        code, text = self.run(words, capture=True)
        try:
            return code, json.loads(text) if text.strip() else None
        except ValueError:
            return code, None


def _csv_sha256(session: Session) -> str:
    from helpers.cmd_sweeps import csv_path_of

    try:
        return hashlib.sha256(csv_path_of(session).read_bytes()).hexdigest()
    except (OSError, WorkflowError):
        return ""


def _manage_supported() -> bool:
    import argparse

    from helpers.cli import COMMANDS_BY_NAME

    setup = COMMANDS_BY_NAME["sweep-watch"].setup
    parser = argparse.ArgumentParser(add_help=False)
    if setup is not None:
        setup(parser)
    return any("--manage" in action.option_strings for action in parser._actions)


def gather_facts(session: Session, options: FlowOptions, runner: Runner) -> FlowFacts:
    """Read-only look-ups: the rental record, the pod's workflow state, the Lium pod's UUID."""
    cfg = session.cfg
    record = rented.flow_record(cfg)
    pods = rented.rented_pods(cfg)
    lium_target = cfg.text("LIUM_TARGET") if cfg.target == "lium" else ""
    recorded_pod = str(record.get("pod_uuid") or "") if cfg.target == "local" else ""
    if recorded_pod and recorded_pod not in pods:
        recorded_pod = ""  # deleted since (pod-delete forgets it)
    runner.lium_target = recorded_pod
    # LIUM_TARGET empty with pod-up's keys set: the pod is a Lium pod to rent (or the one flow rented)
    to_rent = cfg.target == "local" and options.provision == "auto" and bool(
        cfg.text("LIUM_GPU_TYPE") or cfg.text("LIUM_EXECUTOR_ID"))
    kind = "lium" if cfg.target == "lium" or recorded_pod or to_rent else cfg.target
    label = (f"Lium pod {recorded_pod}" if recorded_pod else "a Lium pod to rent" if kind == "lium" and not
             lium_target else session.transport_label())
    facts = FlowFacts(target=kind, target_label=label, lium_target=lium_target, recorded_pod=recorded_pod,
                      rented=frozenset(pods), csv_sha256=_csv_sha256(session), manage_supported=_manage_supported())
    same_pod = record.get("target") == label
    if same_pod:
        facts = _replace(facts, recorded_campaign=str(record.get("campaign_id") or ""),
                         recorded_csv_sha256=str(record.get("csv_sha256") or ""))
    if lium_target and options.teardown == "delete":
        from helpers.cmd_lium import lium_settings
        from helpers.lium import plan_pod_delete

        facts = _replace(facts, target_uuid=plan_pod_delete(lium_settings(cfg)).pod.uuid)
    if will_rent(options, facts):
        return _replace(facts, fsm_state="INIT")  # a pod still to rent starts fresh
    from helpers.flow_plan import check_teardown

    check_teardown(options, facts)  # refused before the pod is even asked
    code, state = runner.json(["fsm-status", "--json"])
    if code != 0 or not isinstance(state, dict):
        raise WorkflowError(f"flow: could not read the pod's workflow state (fsm-status exit {code}); nothing was "
                            "changed", code or ExitCode.FAILED)
    return _replace(facts, fsm_state=str(state.get("state") or "INIT"))


def _replace(facts: FlowFacts, **fields: Any) -> FlowFacts:
    import dataclasses

    return dataclasses.replace(facts, **fields)


def _continue_line(runner: Runner, options: FlowOptions) -> str:
    return shlex.join([ENTRY, *runner.globals, "flow", *options.argv()])


def cmd_flow(session: Session) -> int:
    options = flow_options(session)
    runner = Runner(session)
    facts = gather_facts(session, options, runner)
    phases = plan_flow(options, facts)
    from helpers import teardown

    with teardown.suppressed():  # flow's own teardown phase acts, not its inner sweep-status/sweep-watch
        if session.dry_run:
            return dry_run(session, runner, options, facts, phases)
        return execute(session, runner, options, facts, phases)


def _say(session: Session, text: str) -> None:
    import sys

    sys.stdout.flush()
    session.print(f"flow: {text}")
    sys.stdout.flush()


def dry_run(session: Session, runner: Runner, options: FlowOptions, facts: FlowFacts, phases: list[Phase]) -> int:
    from helpers.cost import estimate_lines

    _say(session, f"plan on {facts.target_label} (workflow state {facts.fsm_state or 'unknown'}); nothing is "
                  "changed")
    for number, phase in enumerate(phases, 1):
        head = f"[{number}/{len(PHASES)}] {phase.name}:"
        if phase.action != "run":
            _say(session, f"{head} {'done already' if phase.action == 'done' else 'skipped'} ({phase.why})")
            continue
        why = f" ({phase.why})" if phase.why else ""
        _say(session, f"{head} would run {runner.shown(phase.argv)}{why}")
        plan = _inner_plan(phase, facts)
        if plan is not None:
            code, _ = runner.run([*plan, "--dry-run"])
            if code != 0:
                _say(session, f"{head} its own --dry-run exited {code} (see above)")
    for line in estimate_lines(session, lambda: _latest_status(runner, facts)):
        _say(session, line)
    return 0


def _latest_status(runner: Runner, facts: FlowFacts) -> Any:
    if will_rent(FlowOptions(), facts):
        return None  # no pod yet
    with contextlib.redirect_stderr(io.StringIO()):  # no campaign yet is no error here
        _, status = runner.json(["sweep-status", "--json"])
    return status


def _inner_plan(phase: Phase, facts: FlowFacts) -> list[str] | None:
    """The phase command whose own --dry-run adds detail now (the pod exists and is ready for it)."""
    words = [w for w in phase.argv if w != "--json"]
    if phase.name == "provision":
        return words
    if phase.name == "sweep" and facts.fsm_state in ("CHECKED_OUT", "SWEEP_COMPLETED", "SWEEP_FAILED",
                                                       "SWEEP_STOPPED"):
        return words
    if phase.name == "teardown" and words[0] == "pod-delete" and not will_rent(FlowOptions(), facts):
        return words
    return None


def execute(session: Session, runner: Runner, options: FlowOptions, facts: FlowFacts, phases: list[Phase]) -> int:
    cfg = session.cfg
    started = time.monotonic()
    outcome: list[str] = []
    campaign = ""
    verified = False
    final = 0
    for number, phase in enumerate(phases, 1):
        head = f"[{number}/{len(PHASES)}] {phase.name}:"
        if phase.action != "run":
            _say(session, f"{head} {'done already' if phase.action == 'done' else 'skipped'} ({phase.why})")
            outcome.append(f"{phase.name} {'done' if phase.action == 'done' else 'skipped'}")
            continue
        words = list(phase.argv)
        if campaign and words[0] in WITH_CAMPAIGN and "--campaign" not in words:
            words += ["--campaign", campaign]
        if phase.name == "teardown" and words[0] == "pod-delete":
            uuid = pod_uuid(facts) or runner.lium_target
            if not verified or not uuid:
                _say(session, f"{head} REFUSED: the results were not fetched and verified; the pod is kept")
                return _stop(session, runner, options, phase, int(ExitCode.REFUSED), outcome)
            words = ["--set", f"LIUM_TARGET={uuid}", *words]
        phase.argv = words
        why = f" ({phase.why})" if phase.why else ""
        _say(session, f"{head} start: {runner.shown(words)}{why}")
        t0 = time.monotonic()
        capture = "--json" in words
        code, data = runner.json(words) if capture else (runner.run(words)[0], None)
        took = time.monotonic() - t0
        note, ok = _after(session, runner, phase, code, data, facts)
        if phase.name == "sweep" and isinstance(data, dict) and data.get("campaign_id"):
            campaign = str(data["campaign_id"])
            rented.update_flow_record(cfg, campaign_id=campaign, csv_sha256=facts.csv_sha256,
                                      target=_label(facts, runner))
        if phase.name == "fetch":
            verified = ok and code == 0
        if not ok:
            _say(session, f"{head} FAILED (exit {code}) after {took:.1f} s{note}")
            return _stop(session, runner, options, phase, code or int(ExitCode.FAILED), outcome)
        if phase.name == "wait" and code != 0:
            final = code
        _say(session, f"{head} {'ok' if code == 0 else f'ended (exit {code})'} in {took:.1f} s{note}")
        outcome.append(f"{phase.name} {'ok' if code == 0 else 'ended'} {took:.1f} s")
    _say(session, f"finished in {time.monotonic() - started:.1f} s: {', '.join(outcome)}"
                  + ("; some rows failed (sweep-status says which)" if final else ""))
    return final


def _label(facts: FlowFacts, runner: Runner) -> str:
    return f"Lium pod {runner.lium_target}" if runner.lium_target else facts.target_label


def _after(session: Session, runner: Runner, phase: Phase, code: int, data: Any, facts: FlowFacts
           ) -> tuple[str, bool]:
    """(a note for the phase's end line, whether the flow goes on)."""
    cfg = session.cfg
    if phase.name == "provision":
        if code != 0 or not isinstance(data, dict) or not data.get("uuid"):
            return "", False
        uuid = str(data["uuid"])
        rented.update_flow_record(cfg, pod_uuid=uuid)
        runner.lium_target = uuid
        return f": pod {data.get('name')} ({uuid}) at {data.get('host')}:{data.get('port')}, state " \
               f"{data.get('state')}; it bills until deleted", True
    if phase.name == "sweep":
        if code != 0 or not isinstance(data, dict):
            return "", False
        rerun = data.get("rerun")
        if rerun is not None:
            return f": campaign {data.get('campaign_id')}, rerunning {len(rerun)} row(s)", True
        return f": campaign {data.get('campaign_id')}, {data.get('rows')} row(s) ({data.get('already_ok')} already " \
               "ok)", True
    if phase.name == "wait":
        if code == 0:
            return ": every row ok" + _cost_note(runner, phase), True
        status_code, status = runner.json(["sweep-status", "--json", *_campaign_of(phase.argv)])
        if code == 1 and isinstance(status, dict) and status.get("executor", {}).get("state") not in (
                "running", "starting", "stopping"):
            totals = ", ".join(f"{k} {v}" for k, v in sorted((status.get("totals") or {}).items()))
            return f": the campaign ended with rows not ok ({totals}){_cost_note(runner, phase, status)}", True
        return "", False
    if phase.name == "fetch":
        if code != 0 or not isinstance(data, dict):
            return "", False
        if data.get("not_final") or data.get("changed_while_running") or data.get("mismatched"):
            return f": NOT verified final ({len(data.get('not_final') or [])} run(s) not final)", False
        files = sum(int(r.get("files") or 0) for r in data.get("runs") or [])
        return f": {len(data.get('runs') or [])} run(s), {files} file(s) verified in {data.get('dest')}", True
    if phase.name == "teardown" and code == 0 and "pod-delete" in phase.argv:
        uuid = pod_uuid(facts) or runner.lium_target
        rented.forget_rented(cfg, uuid)
        rented.update_flow_record(cfg, pod_uuid=None, campaign_id=None)
        return f": pod {uuid} deleted", True
    if phase.name == "teardown" and code in (0, int(ExitCode.NOT_FOUND)):
        billing = " (a Lium pod bills until pod-delete)" if facts.target == "lium" else ""
        return f": nothing left running; the pod is kept{billing}", True
    return "", code == 0


def _campaign_of(words: list[str]) -> list[str]:
    return words[words.index("--campaign"):words.index("--campaign") + 2] if "--campaign" in words else []


def _cost_note(runner: Runner, phase: Phase, status: Any = None) -> str:
    if status is None:
        _, status = runner.json(["sweep-status", "--json", *_campaign_of(phase.argv)])
    from helpers.cost import cost_line

    line = cost_line(status) if isinstance(status, dict) else ""
    return f"; {line}" if line else ""


def _stop(session: Session, runner: Runner, options: FlowOptions, phase: Phase, code: int, outcome: list[str]) -> int:
    _say(session, f"stopped at {phase.name} ({', '.join(outcome + [f'{phase.name} failed'])}); fix the cause above, "
                  f"then continue with: {_continue_line(runner, options)}")
    return code
