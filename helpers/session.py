"""One invocation of workflow.sh: its config, its one connection to the pod, its output mode."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers.errors import ExitCode, WorkflowError
from helpers.prelaunch import COMMANDS
from helpers.resolved import Config, ConfigRequest

if TYPE_CHECKING:  # the rest is imported where used: a read-only command loads only what it needs
    import argparse

    from helpers.agent import Agent
    from helpers.command import Command
    from helpers.transport import Transport


# short read-only calls: on a cold OpenSSH target the call's own ssh opens the shared connection (one login);
# the very commands helpers/prelaunch.py starts the login for while Python imports (stdlib only, imported first)
SHORT_CALLS = COMMANDS


class Session:
    def __init__(self, cfg: Config, options: argparse.Namespace, command: Command) -> None:
        self.cfg = cfg
        self.options = options
        self.command = command
        self._transport: Transport | None = None
        self._agent: Agent | None = None

    @property
    def dry_run(self) -> bool:
        return bool(getattr(self.options, "dry_run", False))

    @property
    def as_json(self) -> bool:
        return bool(getattr(self.options, "json", False))

    # -- the pod
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = make_transport(self.cfg)
            if self.command.name in SHORT_CALLS and hasattr(self._transport, "open_with_first_call"):
                self._transport.open_with_first_call = True
        return self._transport

    def transport_label(self) -> str:
        """Where the pod is, without connecting."""
        if self.cfg.target == "local":
            return "this machine (local target)"
        if self.cfg.target == "lium":
            return f"Lium pod {self.cfg.text('LIUM_TARGET')}"
        return self.cfg.text("OPS_DEFAULT_HOST")

    def agent(self) -> Agent:
        if self._agent is None:
            from helpers.agent import Agent

            self._agent = Agent(self.transport(), self.cfg)
        return self._agent

    def call(self, op: str, args: dict[str, Any] | None = None, *, sync_env: bool = False,
             timeout: float | None = None) -> Any:
        """Call a pod agent op; for Lium targets a stale cached endpoint is re-resolved once."""
        try:
            return self.agent().call(op, args, sync_env=sync_env, timeout=timeout)
        except WorkflowError as exc:
            if exc.code != ExitCode.TRANSPORT or self.cfg.target != "lium" or self._agent is None:
                raise
            if self._agent.uploads or getattr(self._transport, "reached", False):
                raise  # we did reach the pod: not a stale endpoint
            self.close()
            self._transport = make_transport(self.cfg, refresh=True)
            return self.agent().call(op, args, sync_env=sync_env, timeout=timeout)

    def call_reconnecting(self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None,
                          on_stdout: Callable[[bytes], None] | None = None,
                          on_stderr: Callable[[bytes], None] | None = None,
                          args_fn: Callable[[], dict[str, Any]] | None = None) -> Any:
        """``call`` for the commands that wait (task-wait, sweep-watch, task-logs -f): a dropped connection
        is reconnected with backoff for up to RECONNECT_SECS, saying so, then the call is repeated
        (each op is safe to repeat). Out of time: exit 3 with one line."""
        from helpers.transport import ConnectionLost

        budget = self.cfg.number("RECONNECT_SECS") or 0
        deadline: float | None = None
        first = ""
        delay = 1.0
        while True:
            try:
                if args_fn is not None:
                    args = args_fn()  # e.g. task-logs -f: go on from where the output got to
                if on_stdout is not None:
                    result = self.agent().call(op, args, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr)
                else:
                    result = self.call(op, args, timeout=timeout)
            except ConnectionLost as exc:
                now = time.monotonic()
                if deadline is None:
                    if budget <= 0:
                        raise
                    deadline = now + budget
                    first = exc.message
                    self.note(f"workflow.sh {self.command.name}: {exc.message}; reconnecting (for up to {budget}s)")
                if now >= deadline:
                    raise ConnectionLost(f"{first}; no reconnect within RECONNECT_SECS={budget}s (last try: "
                                         f"{exc.message.split(';')[0]})") from None
                self.close()
                time.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 10.0)
                continue
            if deadline is not None:
                self.note(f"workflow.sh {self.command.name}: reconnected to {self.transport().description}; "
                          "carrying on")
            return result

    # -- output
    def print(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")

    def emit_json(self, data: Any) -> None:
        import json

        sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")

    def note(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._transport is not None and getattr(self.options, "debug", False):
            t = self._transport
            uploads = self._agent.uploads if self._agent else 0
            self.note(f"debug: transport {t.kind}: {getattr(t, 'connections', 0)} connection(s), "
                      f"{t.commands_run} remote command(s), {uploads} agent upload(s)"
                      f"{', login started during the imports' if getattr(t, 'prelaunched', False) else ''}")
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self._agent = None


def use_openssh(cfg: Config) -> bool:
    """SSH_CLIENT: auto = OpenSSH's client when installed (shared connections), else paramiko."""
    choice = cfg.text("SSH_CLIENT") or "auto"
    if choice == "paramiko":
        return False
    found = on_path("ssh")
    if choice == "openssh" and not found:
        raise WorkflowError("SSH_CLIENT=openssh but no ssh client is installed; install openssh-client or set "
                            "SSH_CLIENT=auto", ExitCode.USAGE)
    return found


def on_path(name: str) -> bool:
    """shutil.which(name) is not None, without importing shutil (a read-only command's start)."""
    import os

    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate) and os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return True
    return False


def make_transport(cfg: Config, refresh: bool = False) -> Transport:
    if cfg.target == "local":
        from helpers.transport import LocalTransport

        return LocalTransport()
    timeout = cfg.number("SSH_CONNECT_TIMEOUT_SECS") or 15
    keepalive = cfg.number("SSH_KEEPALIVE_SECS") or 15
    ssh_config = cfg.local_path("OPS_SSH_CONFIG")
    openssh = use_openssh(cfg)
    if cfg.target == "lium":
        from helpers.cmd_lium import resolve_lium_endpoint

        endpoint = resolve_lium_endpoint(cfg, refresh=refresh)
        if openssh:
            return _openssh(cfg, endpoint.host, endpoint.port, endpoint.user, endpoint.key_filename,
                            endpoint.known_hosts or str(Path("~/.ssh/known_hosts").expanduser()), None,
                            label=endpoint.label)
        from helpers.paramiko_ssh import SSHTransport

        return SSHTransport(endpoint, timeout, keepalive, None)
    from helpers.transport import parse_host

    if openssh:  # ssh reads ssh_config itself: no parsing (and no paramiko) here
        user, host, port = parse_host(cfg.text("OPS_DEFAULT_HOST"))
        key = cfg.local_path("OPS_SSH_KEY")
        known_hosts = cfg.local_path("OPS_KNOWN_HOSTS") or Path("~/.ssh/known_hosts").expanduser()
        return _openssh(cfg, host, port, user, str(key) if key else None, str(known_hosts),
                        str(ssh_config) if ssh_config else None)
    from helpers.paramiko_ssh import SSHTransport, endpoint_from_ssh_config

    known_hosts = cfg.local_path("OPS_KNOWN_HOSTS") or Path("~/.ssh/known_hosts").expanduser()
    endpoint = endpoint_from_ssh_config(cfg.text("OPS_DEFAULT_HOST"), ssh_config, known_hosts,
                                        cfg.local_path("OPS_SSH_KEY"))
    return SSHTransport(endpoint, timeout, keepalive, ssh_config)


def _openssh(cfg: Config, host: str, port: int | None, user: str | None, key: str | None, known_hosts: str,
             ssh_config: str | None, label: str = "") -> Transport:
    from helpers.openssh import OpenSSHTransport

    return OpenSSHTransport(host, port=port, user=user, key_file=key, known_hosts=known_hosts,
                            ssh_config=ssh_config, connect_timeout=cfg.number("SSH_CONNECT_TIMEOUT_SECS") or 15,
                            keepalive=cfg.number("SSH_KEEPALIVE_SECS") or 15,
                            persist_secs=cfg.number("CONNECTION_PERSIST_SECS") or 0, label=label)


def cmd_disconnect(session: Session) -> int:
    """Close the shared SSH connection to the pod (it would close itself after CONNECTION_PERSIST_SECS idle)."""
    if session.cfg.target == "local":
        session.print("local target: no SSH connection to close")
        return 0
    transport = session.transport()
    closer = getattr(transport, "disconnect", None)
    if closer is not None and closer():
        session.print(f"closed the shared SSH connection to {transport.description}")
    else:
        session.print(f"no shared SSH connection to {transport.description} was open")
    return 0


def run_command(command: Command, options: argparse.Namespace, root: Path) -> int:
    debug = bool(getattr(options, "debug", False))
    session: Session | None = None
    try:
        if command.json is False and getattr(options, "json", False):
            raise WorkflowError(f"{command.name} has no --json output", ExitCode.USAGE)
        if not command.changes and getattr(options, "dry_run", False) and command.name != "help":
            raise WorkflowError(f"{command.name} changes nothing; --dry-run is for commands that do",
                                ExitCode.USAGE)
        if command.name == "help":
            import argparse

            from helpers.cli import cmd_help

            return cmd_help(argparse.Namespace(options=options))
        request = ConfigRequest(
            project_root=root,
            env_file=Path(options.env_file) if getattr(options, "env_file", None) else None,
            profile=getattr(options, "profile", None),
            overrides=tuple(getattr(options, "overrides", None) or ()),
        )
        from helpers import config_cache  # read-only commands: a current cached config, no config parsing

        cfg = config_cache.load(request, cacheable=command.name in config_cache.READ_ONLY)
        session = Session(cfg, options, command)
        handler = getattr(importlib.import_module(f"helpers.{command.module}"), command.handler)
        return int(handler(session) or 0)
    except WorkflowError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stdout.flush()
        message = exc.message.removeprefix(f"{command.name}: ")  # the prefix below already names the command
        sys.stderr.write(f"workflow.sh {command.name}: {message}\n")
        return exc.code
    except KeyboardInterrupt:
        sys.stderr.write(f"workflow.sh {command.name}: interrupted\n")
        return 130
    except BrokenPipeError:  # output piped into `head` and friends
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if session is not None:
            _remember_master(session, request)
            session.close()


def _remember_master(session: Session, request: ConfigRequest) -> None:
    """A read-only command that used a shared OpenSSH master: how the next cold start prelaunches it."""
    record = getattr(session._transport, "prelaunch_record", None)
    if record is None:
        return
    from helpers import prelaunch

    found = record() if session.command.name in SHORT_CALLS and not prelaunch.found_record else None
    if found:
        from helpers import config_cache

        prelaunch.remember(str(config_cache.cache_path(request)), **found)
