"""The command line of workflow.sh: global flags, the command table, dispatch.

Every command is one row of COMMANDS (name, one-line summary, argument setup, handler);
`help` and `CMD --help` are generated from it, so usage text lives in one place.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from helpers.command import Command
from helpers.errors import ExitCode, WorkflowError


def whole_number(text: str) -> int:
    """argparse type of every count/seconds option: a whole number >= 0 (a negative one is refused)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text[:40]!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return number


def positive_seconds(text: str) -> float:
    """argparse type of intervals: a number of seconds > 0."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text[:40]!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return number


def _task_id(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--id", dest="task_id", required=required, metavar="ID", help="task id")


def _setup_task_run(p: argparse.ArgumentParser) -> None:
    _task_id(p)
    p.add_argument("--cmd", required=True, help="the command, run by bash exactly as written")
    p.add_argument("--timeout-secs", type=whole_number, help="wall-clock limit (default TASK_TIMEOUT_SECS; 0 = none)")
    p.add_argument("--stall-secs", type=whole_number,
                   help="stop after this long without output (default TASK_STALL_SECS)")
    p.add_argument("--workdir", help="directory on the pod to run in (default: OPS_REMOTE_REPO if it exists)")
    p.add_argument("--env", dest="task_env", action="append", default=[], metavar="K=V",
                   help="extra environment for the task (repeatable); a config file goes before the command: "
                        "workflow.sh --env FILE task-run ...")
    p.add_argument("--force", action="store_true", help="replace an existing id (the old directory is kept)")


def _setup_task_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("positional_id", nargs="?", metavar="ID", help="one task (default: all)")
    _task_id(p, required=False)
    p.add_argument("--lines", type=whole_number, default=10, help="output lines to show (default 10)")


def _setup_task_wait(p: argparse.ArgumentParser) -> None:
    _task_id(p)
    p.add_argument("--timeout-secs", type=whole_number, help="give up waiting after this long (exit 123)")


def _setup_task_logs(p: argparse.ArgumentParser) -> None:
    _task_id(p)
    p.add_argument("--follow", "-f", action="store_true", help="stream until the task ends")
    p.add_argument("--lines", type=whole_number, default=50, help="last N lines (default 50; 0 = all)")


def _setup_fsm_reset(p: argparse.ArgumentParser) -> None:
    p.add_argument("state", help="the state to set (INIT, BOOTSTRAPPED, CHECKED_OUT, ...)")
    p.add_argument("--reason", default="", help="why (kept in the history)")


def _setup_yes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")


def _setup_csv(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", help="sweep CSV (default SWEEP_CSV)")


def _setup_sweep_start(p: argparse.ArgumentParser) -> None:
    _setup_csv(p)
    p.add_argument("--reuse-run-ids", action="store_true",
                   help="let this campaign take over run ids of another campaign with a different spec "
                        "(their old directories are kept aside)")
    p.add_argument("--index-offset", type=whole_number, metavar="N",
                   help="submit part of the sweep: from its row N (0-based); later parts join the same campaign")
    p.add_argument("--num-jobs", type=whole_number, metavar="M",
                   help="with --index-offset: at most M rows in this part (default: to the last row)")


def campaign_id(text: str) -> str:
    """argparse type of --campaign: checked here, before anything reaches the pod."""
    from helpers.pod.ids import check_id

    try:
        return check_id(text, "campaign id")
    except WorkflowError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _setup_campaign(p: argparse.ArgumentParser) -> None:
    p.add_argument("--campaign", type=campaign_id, help="campaign id (default: the latest)")


def _setup_sweep_status(p: argparse.ArgumentParser) -> None:
    _setup_campaign(p)
    p.add_argument("--attempts", action="store_true", help="also list every attempt of each row (its state, "
                                                            "reason and log)")


def _setup_sweep_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="the sweep run (a CSV run_id)")
    p.add_argument("--attempt", type=int, help="that attempt's log (default: the latest; see sweep-status --attempts)")
    p.add_argument("--follow", "-f", action="store_true", help="stream until the attempt ends")


def _setup_sweep_watch(p: argparse.ArgumentParser) -> None:
    _setup_campaign(p)
    p.add_argument("--interval", type=positive_seconds, help="seconds between refreshes (default WATCH_INTERVAL_SECS)")
    p.add_argument("--manage", action="store_true", help="recover the campaign when its pod is lost: rent a "
                   "replacement (Lium) or resume on the same pod, at most MANAGE_MAX_RECOVERIES times")
    p.add_argument("--plain", action="store_true", help="no live screen: print the table once, then one line per "
                                                        "change (the default off a terminal)")


def _setup_template(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="file to write (default: sweep.csv in the current directory, or sweep-2.csv, "
                                 "... if taken); never overwritten")


def _setup_fetch_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="the run to fetch")


def _setup_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", help="also validate this sweep CSV (default SWEEP_CSV, if it exists)")


def _setup_leaderboard(p: argparse.ArgumentParser) -> None:
    _setup_campaign(p)
    p.add_argument("--all", action="store_true", help="rank the rows of every campaign together")
    p.add_argument("--metric", help="rank by the best value of this metrics.jsonl key, or STAGE:KEY for a stage's "
                   "eval.json value (default: eval_full:<GATE_FULL's metric> when rows ran a full eval, else val_loss)")
    p.add_argument("--higher-is-better", action="store_true", help="the metric's best is its highest value")


def _setup_promote(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="the run whose config is promoted")
    p.add_argument("--as", dest="name", metavar="NAME", help="file name in PROMOTE_DIR (default: the run id; "
                                                               "a plain name, .py added)")
    p.add_argument("--force", action="store_true", help="replace an existing promoted file")


def _setup_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="two or more runs")


def _setup_archive(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list-only", action="store_true", help="list every campaign's lifecycle state; move nothing")
    p.add_argument("--status", choices=("success", "failed", "all"), default="all",
                   help="archive only campaigns in this state (default all finished ones)")
    p.add_argument("--older-than", type=whole_number, metavar="DAYS", help="only campaigns ended this many days ago")
    p.add_argument("--restore", type=campaign_id, metavar="CAMPAIGN", help="move an archived campaign back")


def _setup_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="one or more runs, overlaid")
    p.add_argument("--metric", help="the metrics.jsonl key to draw (default val_loss)")
    p.add_argument("--width", type=whole_number, help="columns (default: the terminal's, at most 160)")
    p.add_argument("--height", type=whole_number, help="lines (default: fits the terminal, at most 32)")


def _setup_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--campaign", type=campaign_id, help="campaign id (default: the latest fetched)")
    p.add_argument("--out", metavar="DIR", help="folder to write (default LOCAL_ARTIFACTS_DIR/_reports/<campaign>/)")


def _setup_flow(p: argparse.ArgumentParser) -> None:
    # values are checked by helpers/flow_plan.py (one line naming the option and the allowed values)
    p.add_argument("--provision", default="auto", metavar="auto|skip", help="rent a Lium pod when LIUM_TARGET is "
                                                                           "empty (default auto)")
    p.add_argument("--sweep", default="start", metavar="start|resume|skip", help="start the SWEEP_CSV campaign, "
                                                                               "resume the latest, or neither")
    p.add_argument("--wait", dest="wait", action="store_true", default=True, help="wait for the sweep (default)")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="return once the sweep started")
    p.add_argument("--fetch", default="all", metavar="none|all", help="fetch-all the campaign, verified (default all)")
    p.add_argument("--report", action="store_true", help="write the HTML report of the fetched campaign")
    p.add_argument("--teardown", metavar="keep|stop|delete",
                   help="keep the pod, stop what runs on it, or delete the Lium pod this tool rented (default "
                        "TEARDOWN_ON_FINISH: keep)")
    p.add_argument("--manage", action="store_true", help="wait with sweep-watch --manage (managed recovery)")
    p.add_argument("--yes", "-y", action="store_true", help="rent/delete without asking")


COMMANDS: tuple[Command, ...] = (
    Command("help", "list the commands, or explain one (help CMD)", "cli", "cmd_help"),
    Command("validate", "check config (and the sweep CSV) without touching the pod", "cmd_setup", "cmd_validate",
            _setup_validate),
    Command("print-resolved-env", "show every key's final value and where it came from (secrets hidden)",
            "cmd_setup", "cmd_print_resolved_env", json=True),
    Command("pod-up", "rent a Lium pod with the LIUM_* keys, wait until ready, print its target", "cmd_lium",
            "cmd_pod_up", _setup_yes, changes=True, json=True),
    Command("pod-status", "reachability, GPUs, disk, volume, tools on the pod (read-only)", "cmd_setup",
            "cmd_pod_status", json=True),
    Command("pod-delete", "delete exactly the configured Lium pod (by UUID), after confirmation", "cmd_lium",
            "cmd_pod_delete", _setup_yes, changes=True),
    Command("bootstrap", "check/install tmux, rsync, git, python3-venv; run BOOTSTRAP_SCRIPT", "cmd_setup",
            "cmd_bootstrap", changes=True),
    Command("checkout", "clone REPO_URL, make the venv, install, verify torch/CUDA and data", "cmd_setup",
            "cmd_checkout", changes=True),
    Command("fsm-status", "the workflow state on the pod, with history (read-only)", "cmd_setup",
            "cmd_fsm_status", json=True),
    Command("fsm-reset", "set the workflow state explicitly (fsm-reset STATE --reason ...)", "cmd_setup",
            "cmd_fsm_reset", _setup_fsm_reset, changes=True),
    Command("task-run", "start a tracked task in tmux on the pod and return at once", "cmd_tasks",
            "cmd_task_run", _setup_task_run, changes=True, json=True),
    Command("task-status", "state, exit code, failure class, heartbeat and output of tasks", "cmd_tasks",
            "cmd_task_status", _setup_task_status, json=True),
    Command("task-wait", "block until a task ends; exit with its outcome", "cmd_tasks", "cmd_task_wait",
            _setup_task_wait, json=True),
    Command("task-list", "all tasks, newest first", "cmd_tasks", "cmd_task_list", json=True),
    Command("task-logs", "a task's output (--follow streams it until the task ends)", "cmd_tasks",
            "cmd_task_logs", _setup_task_logs),
    Command("task-kill", "stop a task and everything it started (state cancelled)", "cmd_tasks",
            "cmd_task_kill", lambda p: _task_id(p), changes=True, json=True),
    Command("sweep-csv-template", "write a starter sweep CSV (never overwrites)", "cmd_sweeps",
            "cmd_sweep_csv_template", _setup_template, changes=True),
    Command("sweep-start", "validate the CSV, create a campaign, start the executor in tmux", "cmd_sweeps",
            "cmd_sweep_start", _setup_sweep_start, changes=True, json=True),
    Command("sweep-status", "every row's state, attempts, duration, failure, val loss; totals", "cmd_sweeps",
            "cmd_sweep_status", _setup_sweep_status, changes=True, json=True),  # changes: TEARDOWN_ON_FINISH
    Command("sweep-logs", "one sweep row's log (the latest attempt, or --attempt N); --follow streams it",
            "cmd_sweepinfo", "cmd_sweep_logs", _setup_sweep_logs),
    Command("sweep-list", "every campaign on the pod with its state, rows and dates", "cmd_sweepinfo",
            "cmd_sweep_list", None, json=True),
    Command("sweep-watch", "sweep-status, refreshed until the sweep ends", "cmd_sweeps", "cmd_sweep_watch",
            _setup_sweep_watch),
    Command("sweep-stop", "stop the executor and every run (cancelled), nothing left behind", "cmd_sweeps",
            "cmd_sweep_stop", _setup_campaign, changes=True, json=True),
    Command("sweep-resume", "rerun only the failed, cancelled and missing rows of a campaign", "cmd_sweeps",
            "cmd_sweep_resume", _setup_campaign, changes=True, json=True),
    Command("track", "(re)send a finished campaign from the pod's files to MLFLOW_TRACKING_URI (idempotent)",
            "tracking.commands", "cmd_track", _setup_campaign, changes=True, json=True),
    Command("wandb-sync", "run `wandb sync` on the pod for a campaign's offline W&B runs; list rows not synced",
            "tracking.commands", "cmd_wandb_sync", _setup_campaign, changes=True, json=True),
    Command("fetch-run", "copy one run into LOCAL_ARTIFACTS_DIR/<run_id>/ (incremental, verified)", "fetch",
            "cmd_fetch_run", _setup_fetch_run, changes=True, json=True),
    Command("disconnect", "close the shared SSH connection to the pod (it closes itself when idle)", "session",
            "cmd_disconnect"),
    Command("fetch-all", "copy every run of a campaign (from its manifest on the pod), verified", "fetch",
            "cmd_fetch_all", _setup_campaign, changes=True, json=True),
    Command("leaderboard", "finished rows ranked by a metric (leaderboard.csv/.md on the pod)", "cmd_results",
            "cmd_leaderboard", _setup_leaderboard, changes=True, json=True),
    Command("compare", "the config difference and metrics of two or more runs", "cmd_results", "cmd_compare",
            _setup_compare, json=True),
    Command("promote", "write a run's resolved trainer config into PROMOTE_DIR (never overwrites)", "cmd_results",
            "cmd_promote", _setup_promote, changes=True, json=True),
    Command("archive", "move finished campaigns and their runs under _archive/ (--restore, --list-only)",
            "cmd_archive", "cmd_archive", _setup_archive, changes=True, json=True),
    Command("report", "an HTML report with loss curves of a fetched campaign (no pod needed)", "report",
            "cmd_report", _setup_report, changes=True, json=True),
    Command("flow", "pod-up, bootstrap, checkout, sweep, wait, fetch, report, teardown: one command, resumable",
            "cmd_flow", "cmd_flow", _setup_flow, changes=True),
    Command("plot", "loss curves of runs drawn in the terminal, overlaid (fetched files, else the pod)", "cmd_plot",
            "cmd_plot", _setup_plot, json=True),
)
COMMANDS_BY_NAME = {c.name: c for c in COMMANDS}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the message and where to look), exit 2."""

    def error(self, message: str) -> NoReturn:
        import difflib
        import re

        unknown = re.match(r"argument COMMAND: invalid choice: '([^']*)'", message)
        if unknown:  # not the list of every command: the close ones
            close = difflib.get_close_matches(unknown.group(1), list(COMMANDS_BY_NAME), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else "workflow.sh help lists the commands"
            sys.stderr.write(f"{self.prog}: unknown command {unknown.group(1)[:60]!r}; {hint}\n")
            raise SystemExit(int(ExitCode.USAGE))
        sys.stderr.write(f"{self.prog}: {message}; see {self.prog} --help\n")
        raise SystemExit(int(ExitCode.USAGE))


def _add_global_flags(p: argparse.ArgumentParser, suppress: bool) -> None:
    default: object = argparse.SUPPRESS if suppress else None
    g = p.add_argument_group("global options")
    if p.prog != "workflow.sh task-run":  # there --env K=V is the task's environment: give --env FILE first
        g.add_argument("--env", dest="env_file", metavar="FILE", default=default,
                       help="config file (default workflow.env)")
    g.add_argument("--profile", metavar="NAME", default=default, help="layer profiles/NAME.env over the config")
    # after the command --set collects into its own list, merged in main(): argparse would otherwise let the
    # subcommand's list replace the one given before the command
    g.add_argument("--set", dest="sub_overrides" if suppress else "overrides", action="append", metavar="KEY=VALUE",
                   default=default if suppress else [], help="override one key (repeatable)")
    g.add_argument("--dry-run", action="store_true", default=default if suppress else False,
                   help="print the exact plan, change nothing")
    g.add_argument("--json", action="store_true", default=default if suppress else False,
                   help="machine-readable output (status commands)")
    g.add_argument("--debug", action="store_true", default=default if suppress else False,
                   help="show tracebacks and transport details")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``only``: with that one command's subparser (a command starts faster)."""
    parser = _Parser(prog="workflow.sh", add_help=False,
                                     description="Experiments on GPU pods from one config file (workflow.env).")
    parser.add_argument("-h", "--help", action="store_true", dest="top_help")
    _add_global_flags(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        if only is not None and command.name != only:
            continue
        sub = subparsers.add_parser(command.name, help=command.summary, description=command.summary,
                                    prog=f"workflow.sh {command.name}")
        if command.name == "help":
            sub.add_argument("topic", nargs="?", help="a command")
        if command.setup:
            command.setup(sub)
        _add_global_flags(sub, suppress=True)
    return parser


def usage_text() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = ["usage: workflow.sh [--env FILE] [--profile NAME] [--set KEY=VALUE]... [--dry-run] [--json] "
             "[--debug] COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS]
    lines += ["", "workflow.sh COMMAND --help shows a command's options. Exit codes: README.md."]
    return "\n".join(lines)


def cmd_help(session: object) -> int:
    options = getattr(session, "options")  # noqa: B009
    topic = getattr(options, "topic", None)
    if topic:
        if topic not in COMMANDS_BY_NAME:
            raise WorkflowError(f"help: unknown command {topic!r}; run workflow.sh help", ExitCode.USAGE)
        build_parser().parse_args([topic, "--help"])
    print(usage_text())
    return 0


def project_root() -> Path:
    env_root = os.environ.get("WORKFLOW_ROOT")
    return Path(env_root).resolve() if env_root else Path(__file__).resolve().parent.parent


def command_named(argv: list[str]) -> str | None:
    """The command of a plain command line (only the exact global flags before it), else None."""
    from helpers.prelaunch import command_index

    index = command_index(argv)
    word = argv[index] if index < len(argv) else None
    return word if word in COMMANDS_BY_NAME and word != "help" else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=command_named(argv))  # the same parse, without 26 unused subparsers
    if not argv or argv[0] in ("-h", "--help"):
        print(usage_text())
        return 0
    try:
        options, extra = parser.parse_known_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2 with its own one-line message
        return int(exc.code or 0)
    if extra:  # named by the command they were given to, like every other usage error
        prog = f"workflow.sh {options.command}" if options.command else "workflow.sh"
        shown = " ".join(a.split("=", 1)[0] + "=..." if "=" in a else a for a in extra)[:80]  # no value shown
        sys.stderr.write(f"{prog}: unrecognized arguments: {shown}; see {prog} --help\n")
        return int(ExitCode.USAGE)
    if options.top_help or not options.command:
        print(usage_text())
        return 0
    options.overrides = list(options.overrides or []) + list(getattr(options, "sub_overrides", None) or [])
    command = COMMANDS_BY_NAME[options.command]
    from helpers.session import run_command

    return run_command(command, options, project_root())


if __name__ == "__main__":
    sys.exit(main())
