#!/usr/bin/env python3
"""bench/latency: how much a read-only workflow.sh command costs over a bare `ssh host true`.

Run (from the repo root; WORKFLOW_VENV = the venv workflow.sh uses, default: this python's prefix):

    WORKFLOW_VENV=/tmp/devvenv /tmp/devvenv/bin/python bench/latency.py [--rounds 15] [--max-ratio 2.0]

In one run against a loopback OpenSSH sshd that it starts itself (tests/conftest.py start_sshd,
with its own host and client keys, temp pod directories and config file), it warms up once (the
pod agent is uploaded then), and then interleaves ROUNDS rounds of three whole processes, each
timed with time.perf_counter around subprocess.run:

    ssh -F /dev/null -p PORT -i KEY -o IdentitiesOnly=yes -o BatchMode=yes
        -o UserKnownHostsFile=<pinned> -o StrictHostKeyChecking=yes root@127.0.0.1 true
    workflow.sh --env CFG fsm-status
    workflow.sh --env CFG pod-status

It prints min/median/max of each and the ratios median(workflow.sh X) / median(ssh true) with
PASS (<= max ratio, default 2.0, the target in the issue) or OVER. Exit 0 when both pass, 1 when
one is over, 2 when a command failed.

PYTHONDONTWRITEBYTECODE is removed from the environment of the workflow.sh runs (a user's machine
caches bytecode; with it set every start recompiles the sources); the output says whether it was
set. The sshd and the temp directory are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = REPO_ROOT / "infra_scripts" / "workflow.sh"


def _import_conftest() -> types.ModuleType:
    """tests/conftest.py (start_sshd, free_port); it imports pytest, which this python may lack:
    then a stand-in with the two names it uses at import and run time is enough."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        import pytest  # noqa: F401
    except ImportError:
        stub = types.ModuleType("pytest")

        def fixture(*args: object, **kwargs: object) -> object:
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]
            return lambda function: function

        def fail(message: str) -> None:
            raise RuntimeError(message)

        stub.fixture = fixture  # type: ignore[attr-defined]
        stub.fail = fail  # type: ignore[attr-defined]
        sys.modules["pytest"] = stub
    import conftest

    return conftest


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return elapsed


class CommandFailed(Exception):
    pass


def write_config(path: Path, pod: Path, server: object, known_hosts: Path) -> None:
    values = {
        "OPS_DEFAULT_HOST": server.target,  # type: ignore[attr-defined]
        "OPS_SSH_KEY": str(server.key),  # type: ignore[attr-defined]
        "OPS_KNOWN_HOSTS": str(known_hosts),
        "OPS_SSH_CONFIG": str(path.parent / "no-ssh-config"),  # not the user's ~/.ssh/config
        "SSH_CONNECT_TIMEOUT_SECS": "15",
        "OPS_REMOTE_OUTPUTS_DIR": str(pod / "outputs"),
        "OPS_REMOTE_REPO": str(pod / "repo"),
        "REMOTE_ENV_PATH": str(pod / "project.env"),
        "DATA_DIR": str(pod / "data"),
        "TMUX_SOCKET": f"wfbench-{uuid.uuid4().hex[:8]}",
        "REQUIRE_CUDA": "0",
    }
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))


def summary(name: str, samples: list[float]) -> str:
    return (f"  {name:<22} min {min(samples) * 1000:7.1f} ms   median {statistics.median(samples) * 1000:7.1f} ms"
            f"   max {max(samples) * 1000:7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--max-ratio", type=float, default=2.0, help="target ratio (default 2.0)")
    options = parser.parse_args(argv)
    if options.rounds < 1:
        parser.error("--rounds must be >= 1")

    venv = os.environ.get("WORKFLOW_VENV") or sys.prefix
    if not os.access(os.path.join(venv, "bin", "python"), os.X_OK):
        print(f"bench/latency: {venv}/bin/python not found; set WORKFLOW_VENV to the venv workflow.sh uses",
              file=sys.stderr)
        return 2
    for tool in ("ssh", "ssh-keygen", "/usr/sbin/sshd"):
        if not shutil.which(tool):
            print(f"bench/latency: {tool} is required (apt-get install openssh-server openssh-client)",
                  file=sys.stderr)
            return 2
    conftest = _import_conftest()

    bytecode_flag = os.environ.get("PYTHONDONTWRITEBYTECODE")
    wf_env = {**os.environ, "WORKFLOW_VENV": venv}
    wf_env.pop("PYTHONDONTWRITEBYTECODE", None)
    wf_env.pop("WORKFLOW_PROFILE", None)
    ssh_env = {key: value for key, value in os.environ.items() if key != "SSH_AUTH_SOCK"}

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="wf-bench-latency-"))
    server = None
    try:
        server = conftest.start_sshd(workdir / "sshd", conftest.free_port())
        known_hosts = server.pinned_known_hosts(workdir / "known_hosts")
        config = workdir / "workflow.env"
        pod = workdir / "pod"
        pod.mkdir()
        write_config(config, pod, server, known_hosts)
        commands = {
            "ssh host true": [*server.ssh_argv(known_hosts), "true"],
            "workflow.sh fsm-status": [str(WORKFLOW), "--env", str(config), "fsm-status"],
            "workflow.sh pod-status": [str(WORKFLOW), "--env", str(config), "pod-status"],
        }
        envs = {name: ssh_env if name.startswith("ssh") else wf_env for name in commands}

        print(f"bench/latency: {platform.node()}, {os.cpu_count()} CPU(s), load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, python {platform.python_version()}, "
              f"WORKFLOW_VENV={venv}")
        print(f"sshd {server.target} (loopback, started for this run); {options.rounds} interleaved rounds "
              "after one warm-up (agent upload)")
        print("PYTHONDONTWRITEBYTECODE " + ("was set here; removed for the workflow.sh runs (bytecode is cached, as "
                                           "on a user's machine)" if bytecode_flag is not None
                                           else "is not set (bytecode is cached, as on a user's machine)"))
        for name, command in commands.items():  # warm-up: agent upload, bytecode, page cache
            timed(command, envs[name])
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(options.rounds):
            for name, command in commands.items():
                samples[name].append(timed(command, envs[name]))

        print()
        for name, values in samples.items():
            print(summary(name, values))
        base = statistics.median(samples["ssh host true"])
        print()
        over = False
        for name in ("workflow.sh fsm-status", "workflow.sh pod-status"):
            ratio = statistics.median(samples[name]) / base
            verdict = "PASS" if ratio <= options.max_ratio else "OVER"
            over = over or verdict == "OVER"
            print(f"  {name:<22} / ssh host true = {ratio:4.2f}x  (target <= {options.max_ratio:.1f}x)  {verdict}")
        return 1 if over else 0
    except CommandFailed as exc:
        print(f"bench/latency: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/latency: interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            conftest.with_signal(server.pid, signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
