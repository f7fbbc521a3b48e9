"""flow's plan, pure: from the options and what is known about the pod (FlowFacts), the phases to run.

Phases, in order: provision (rent a Lium pod), bootstrap, checkout, sweep (start or resume), wait,
fetch, report, teardown. A phase is ``run`` (with the workflow.sh command it runs), ``done`` (the
workflow state says it is done already: not redone) or ``skip`` (not asked for, or nothing to do).
`--teardown delete` is refused here, before anything runs (also with --dry-run), unless the pod is a
Lium pod this tool rented (its UUID recorded by pod-up or flow) and the flow fetches and verifies
the results first. With --no-wait it is allowed only when TEARDOWN_ON_FINISH=delete: the teardown
phase is then skipped, and the first sweep-status/sweep-watch/flow that sees the campaign ended
fetches, verifies and deletes the pod (helpers/teardown.py); the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from helpers.errors import ExitCode, WorkflowError

PHASES = ("provision", "bootstrap", "checkout", "sweep", "wait", "fetch", "report", "teardown")
CHOICES = {"provision": ("auto", "skip"), "sweep": ("start", "resume", "skip"), "fetch": ("none", "all"),
           "teardown": ("keep", "stop", "delete")}
BOOTSTRAPPED = ("BOOTSTRAPPED", "CHECKED_OUT", "SWEEP_RUNNING", "SWEEP_COMPLETED", "SWEEP_FAILED", "SWEEP_STOPPED")
CHECKED_OUT = BOOTSTRAPPED[1:]
SWEEP_STATES = BOOTSTRAPPED[2:]


@dataclass(frozen=True)
class FlowOptions:
    provision: str = "auto"
    sweep: str = "start"
    wait: bool = True
    fetch: str = "all"
    report: bool = False
    teardown: str = "keep"
    manage: bool = False
    yes: bool = False
    on_finish: str = "keep"  # TEARDOWN_ON_FINISH as configured (what sweep-status does once the campaign ends)

    def argv(self) -> list[str]:
        """These options as flow's own command line (for the `continue with` line)."""
        words = [f"--provision={self.provision}", f"--sweep={self.sweep}", "--wait" if self.wait else "--no-wait",
                 f"--fetch={self.fetch}", f"--teardown={self.teardown}"]
        words += ["--report"] if self.report else []
        words += ["--manage"] if self.manage else []
        words += ["--yes"] if self.yes else []
        return words


@dataclass(frozen=True)
class FlowFacts:
    """What flow found before planning (read-only look-ups)."""

    target: str  # local | ssh | lium
    target_label: str
    lium_target: str = ""  # LIUM_TARGET as configured
    recorded_pod: str = ""  # UUID of a pod flow rented earlier for this config (LIUM_TARGET empty)
    target_uuid: str = ""  # the Lium pod's UUID (resolved), when known
    rented: frozenset[str] = frozenset()  # UUIDs this tool rented (rented-pods.json)
    fsm_state: str = "INIT"  # the pod's workflow state ("" = not reachable yet: a pod still to rent)
    csv_sha256: str = ""
    recorded_campaign: str = ""  # the campaign flow started earlier for this CSV on this pod
    recorded_csv_sha256: str = ""
    manage_supported: bool = False  # sweep-watch has --manage


@dataclass
class Phase:
    name: str
    action: str  # run | done | skip
    why: str = ""
    argv: list[str] = field(default_factory=list)


def check_choice(option: str, value: str) -> str:
    allowed = CHOICES[option]
    if value not in allowed:
        raise WorkflowError(f"flow: --{option} {value!r} is not a phase value; use one of {', '.join(allowed)}",
                            ExitCode.USAGE)
    return value


def pod_uuid(facts: FlowFacts) -> str:
    """The Lium pod the flow works on: the configured one, else the one flow rented earlier."""
    return facts.target_uuid or facts.recorded_pod


def will_rent(options: FlowOptions, facts: FlowFacts) -> bool:
    return (facts.target == "lium" and not facts.lium_target and not facts.recorded_pod
            and options.provision == "auto")


def check_teardown(options: FlowOptions, facts: FlowFacts) -> None:
    """--teardown delete only for a Lium pod this tool rented, after a verified fetch; refused up front."""
    if options.teardown != "delete":
        return
    why = ""
    if facts.target != "lium":
        why = (f"the pod is {facts.target_label}, not a Lium pod this tool rented: it deletes only a pod whose "
               "UUID pod-up or flow recorded")
    elif not will_rent(options, facts) and pod_uuid(facts) not in facts.rented:
        shown = pod_uuid(facts) or facts.lium_target or "(none)"
        why = (f"Lium pod {shown} was not rented by this tool (its UUID is not in the record of pod-up/flow "
               "rentals): delete it yourself with pod-delete if you mean to")
    elif not options.wait and options.on_finish != "delete":
        why = ("it needs the sweep finished and its results fetched: drop --no-wait, or set TEARDOWN_ON_FINISH=delete "
               "so that the first sweep-status/sweep-watch/flow after the campaign ends fetches, verifies and deletes")
    elif options.wait and options.fetch != "all":
        why = "it needs the results fetched and verified first: use --fetch all"
    if why:
        raise WorkflowError(f"flow: --teardown delete refused: {why}; nothing was changed", ExitCode.REFUSED)


def plan_flow(options: FlowOptions, facts: FlowFacts) -> list[Phase]:
    """Every phase with its action; the commands are workflow.sh argv words (global flags added later)."""
    check_teardown(options, facts)
    state = facts.fsm_state
    phases: list[Phase] = []
    if facts.target != "lium":
        phases.append(Phase("provision", "skip", f"the target is {facts.target_label}: nothing to rent"))
    elif facts.lium_target:
        phases.append(Phase("provision", "skip", f"LIUM_TARGET={facts.lium_target} names the pod"))
    elif facts.recorded_pod:
        phases.append(Phase("provision", "done", f"flow rented pod {facts.recorded_pod} earlier"))
    elif options.provision == "skip":
        phases.append(Phase("provision", "skip", "--provision skip"))
    else:
        phases.append(Phase("provision", "run", "rent a Lium pod with the LIUM_* keys",
                            ["pod-up", "--json"] + (["--yes"] if options.yes else [])))
    phases.append(Phase("bootstrap", "done", f"workflow state {state}") if state in BOOTSTRAPPED
                  else Phase("bootstrap", "run", "", ["bootstrap"]))
    phases.append(Phase("checkout", "done", f"workflow state {state}") if state in CHECKED_OUT
                  else Phase("checkout", "run", "", ["checkout"]))
    campaign = ""
    ours = (facts.recorded_campaign and state in SWEEP_STATES and facts.recorded_csv_sha256 == facts.csv_sha256
            and options.sweep == "start")
    if options.sweep == "skip":
        phases.append(Phase("sweep", "skip", "--sweep skip (waits on the latest campaign)"))
    elif ours:
        campaign = facts.recorded_campaign
        phases.append(Phase("sweep", "done", f"flow started campaign {campaign} of this CSV earlier"))
    elif options.sweep == "resume" and state == "SWEEP_RUNNING":
        phases.append(Phase("sweep", "skip", "a sweep is running: nothing to resume, waits on it"))
    elif options.sweep == "resume":
        campaign = facts.recorded_campaign
        phases.append(Phase("sweep", "run", "rerun the failed and missing rows",
                            ["sweep-resume", "--json"] + (["--campaign", campaign] if campaign else [])))
    else:
        phases.append(Phase("sweep", "run", "start a campaign of the sweep CSV", ["sweep-start", "--json"]))
    of = ["--campaign", campaign] if campaign else []
    if not options.wait:
        phases.append(Phase("wait", "skip", "--no-wait (run flow again to wait and fetch)"))
    else:
        manage = ["--manage"] if options.manage and facts.manage_supported else []
        why = "--manage: sweep-watch has no --manage here: waits normally" if options.manage and not manage else ""
        phases.append(Phase("wait", "run", why, ["sweep-watch", *of, *manage]))
    if options.fetch == "none" or not options.wait:
        phases.append(Phase("fetch", "skip", "--fetch none" if options.fetch == "none" else "--no-wait"))
    else:
        phases.append(Phase("fetch", "run", "every run of the campaign, verified", ["fetch-all", "--json", *of]))
    if options.report and options.fetch == "all" and options.wait:
        phases.append(Phase("report", "run", "", ["report", *of]))
    else:
        phases.append(Phase("report", "skip", "needs --fetch all and waiting" if options.report else "no --report"))
    if options.teardown == "keep":
        billing = "; it bills until pod-delete" if facts.target == "lium" else ""
        phases.append(Phase("teardown", "skip", f"--teardown keep: the pod is kept{billing}"))
    elif options.teardown == "stop":
        phases.append(Phase("teardown", "run", "stop what the campaign still runs on the pod, close the connection",
                            ["sweep-stop", *of]))
    elif not options.wait:  # check_teardown let it through: TEARDOWN_ON_FINISH=delete does it later
        pod = f"Lium pod {pod_uuid(facts)}" if pod_uuid(facts) else "the Lium pod this flow rents"
        phases.append(Phase("teardown", "skip", f"--no-wait with TEARDOWN_ON_FINISH=delete: deleted later, not now: "
                                                f"once the campaign has ended, the first sweep-status, sweep-watch or "
                                                f"flow of {pod} fetches and verifies its results, then "
                                                "deletes that pod by UUID"))
    else:
        phases.append(Phase("teardown", "run", "delete the Lium pod this tool rented, by UUID",
                            ["pod-delete", "--yes"]))
    return phases
