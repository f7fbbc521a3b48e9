"""Where "the pod" is: an SSH endpoint, whichever way it was found (ssh alias, user@host:port, Lium)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SSHEndpoint:
    """Everything needed to open one SSH connection to a pod, without prompting."""

    host: str  # address or name to connect to (after ~/.ssh/config resolution)
    port: int = 22
    user: str | None = None
    key_filename: str | None = None  # private key; None = the user's agent/default keys
    known_hosts: str | None = None  # file that pins this host's key (accept-new, then pinned)
    label: str = ""  # how to name it in messages, e.g. "lium pod gpu-a (3f2c...)"
    ssh_alias: str | None = None  # the ~/.ssh/config Host alias it came from, if any
    proxy_command: str | None = None  # ProxyCommand from ~/.ssh/config, if any
    volume_path: str | None = None  # a Lium pod's rental volume mount (LIUM_VOLUME), once it runs

    def display(self) -> str:
        if self.label:
            return self.label
        who = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{who}{host}:{self.port}"
