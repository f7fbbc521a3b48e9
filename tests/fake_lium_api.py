"""A small, stateful fake of the Lium HTTP API, for running the real Lium SDK against in tests.

It speaks only the calls the SDK (lium.io 0.32) makes on the paths helpers.lium uses:

    GET    /version                          features (none advertised)
    GET    /pods                             Lium.ps(), and every Lium.wait_ready() poll
    GET    /pods/{id}                        Lium.pod()
    DELETE /pods/{id}                        Lium.rm()
    GET    /pods/{id}/events                 Lium.pod_failure_cause() on a failed start
    POST   /pods/{id}/schedule-removal       Lium.schedule_termination()
    GET    /executors                        Lium.ls() / Lium.get_executor() (filters on ``machine_names``)
    GET    /executors/default-docker-image   Lium.default_docker_template()
    POST   /executors/{id}/rent              Lium.up()
    GET    /machines                         Lium.ls(gpu_type=...) maps a short GPU name to machine names
    GET    /templates, /templates/{id}       template choice and its volume-encryption flag
    GET    /users/me                         Lium.me()
    GET    /ssh-keys, POST /ssh-keys         the SSH-key registration Lium.up() does before renting
    GET    /volumes, POST /volumes           Lium.volumes() / Lium.volume_create()

Every request is recorded (method, path, query, JSON body, API key sent). The ``X-API-KEY``
header is checked on every call (401 when wrong). A pod can be kept PENDING for N pod listings
or forever, and any route can be made to fail with a given status.
"""

from __future__ import annotations

import json
import re
import threading
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PREFIX = "/api"
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
PYTORCH_IMAGE, PYTORCH_TAG = "daturaai/pytorch", "2.4.0-py3.11-cuda12.4"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str  # without the /api prefix and the query string
    query: dict[str, list[str]]
    body: Any  # parsed JSON, or None
    api_key: str | None


@dataclass
class Failure:
    status: int
    method: str | None  # None = any method
    path_regex: str | None  # None = any path (matched with re.fullmatch against the path)
    times: int | None  # None = forever
    body: dict[str, Any] = field(default_factory=lambda: {"detail": "injected failure"})


class FakeLiumAPI:
    """The fake server. Use as a context manager, or call start()/stop()."""

    def __init__(self, api_key: str = "test-api-key") -> None:
        self.api_key = api_key
        self.pods: list[dict[str, Any]] = []
        self.executors: list[dict[str, Any]] = []
        self.volumes: list[dict[str, Any]] = []
        self.volume_mount = "/root/volume"  # where a rented pod's volume is mounted (its local_volume_path)
        self.ssh_keys: list[dict[str, Any]] = []
        self.templates: list[dict[str, Any]] = [
            {
                "id": "11111111-2222-4333-8444-555555555555",
                "name": "PyTorch",
                "docker_image": PYTORCH_IMAGE,
                "docker_image_tag": PYTORCH_TAG,
                "category": "PYTORCH",
                "status": "VERIFY_SUCCESS",
                "supports_volume_encryption": False,
                "user_id": "someone-else",
            }
        ]
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        # how many pod listings a newly rented pod stays PENDING for (None = forever)
        self.rent_pending_polls: int | None = 0
        # where a newly rented pod's SSH answers (None: a made-up 198.51.100.N address)
        self.rent_ssh: tuple[str, int] | None = None
        self._pending: dict[str, int | None] = {}  # pod id -> listings left as PENDING
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._next_host = 10

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeLiumAPI:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeLiumAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{PREFIX}"

    # ------------------------------------------------------------------ state set-up
    def add_executor(
        self,
        *,
        machine_name: str = H100,
        gpu_count: int = 1,
        price_per_gpu: float = 2.0,
        country: str = "US",
        executor_id: str | None = None,
        available_gpu_count: int | None = None,
    ) -> dict[str, Any]:
        row = {
            "id": executor_id or str(uuidlib.uuid4()),
            "machine_name": machine_name,
            "gpu_count": gpu_count,
            "available_gpu_count": gpu_count if available_gpu_count is None else available_gpu_count,
            "min_gpu_count_for_rental": 1,
            "price_per_gpu": price_per_gpu,
            "location": {"country_code": country, "country": country},
            "executor_ip_address": "192.0.2.1",
            "status": "available",
            "specs": {
                "gpu": {
                    "count": gpu_count,
                    "driver": "550.54",
                    "details": [{"name": machine_name}] * gpu_count,
                },
                "cpu": {"count": 32},
            },
        }
        with self._lock:
            self.executors.append(row)
        return row

    def add_pod(
        self,
        name: str,
        *,
        status: str = "RUNNING",
        pod_id: str | None = None,
        host: str | None = None,
        port: int | None = None,
        user: str = "root",
        pending_polls: int | None = 0,
        executor: dict[str, Any] | None = None,
        volume_path: str | None = None,
    ) -> dict[str, Any]:
        """A pod on the account; ``status="PENDING"`` with ``pending_polls=N`` (None: forever) turns RUNNING
        after N listings; ``volume_path``: where its volume is mounted (the row's local_volume_path)."""
        with self._lock:
            self._next_host += 1
            n = self._next_host
        row: dict[str, Any] = {
            "id": pod_id or str(uuidlib.uuid4()),
            "pod_name": name,
            "status": status,
            "ssh_connect_cmd": None,
            "ports_mapping": {"22": port or 40000 + n},
            "created_at": _now(),
            "updated_at": _now(),
            "executor": executor,
            "template": {},
            "removal_scheduled_at": None,
            "gpu_count": str((executor or {}).get("gpu_count", 1)),
            "_ssh": f"ssh {user}@{host or f'198.51.100.{n}'} -p {port or 40000 + n}",
        }
        if status == "RUNNING":
            row["ssh_connect_cmd"] = row["_ssh"]
        if volume_path:
            row["local_volume_path"] = volume_path
        with self._lock:
            self.pods.append(row)
            if status == "PENDING":
                self._pending[row["id"]] = pending_polls
        return row

    def add_volume(self, name: str) -> dict[str, Any]:
        """A volume on the account (as POST /volumes makes one)."""
        volume = {"id": str(uuidlib.uuid4()), "name": name, "description": "", "created_at": _now(),
                  "current_size_bytes": 0}
        with self._lock:
            self.volumes.append(volume)
        return volume

    def fail(
        self, status: int, *, method: str | None = None, path: str | None = None, times: int | None = None
    ) -> None:
        """Answer ``status`` to matching requests (``path`` is a regex over the path without /api)."""
        with self._lock:
            self.failures.append(Failure(status, method, path, times))

    # ------------------------------------------------------------------ inspection
    def calls(self, method: str, path_regex: str = ".*") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.fullmatch(path_regex, r.path)]

    def pod_ids(self) -> list[str]:
        with self._lock:
            return [p["id"] for p in self.pods]

    def find_pod(self, pod_id: str) -> dict[str, Any] | None:
        with self._lock:
            return next((p for p in self.pods if p["id"] == pod_id), None)

    # ------------------------------------------------------------------ request handling
    def handle(self, method: str, raw_path: str, body: Any, api_key: str | None) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path = parts.path[len(PREFIX):] if parts.path.startswith(PREFIX) else parts.path
        query = parse_qs(parts.query)
        with self._lock:
            self.requests.append(Recorded(method, path, query, body, api_key))
            failure = self._matching_failure(method, path)
        if failure is not None:
            return failure.status, failure.body
        if api_key != self.api_key:
            return 401, {"detail": "Invalid API key"}
        with self._lock:
            return self._route(method, path, query, body)

    def _matching_failure(self, method: str, path: str) -> Failure | None:
        for failure in self.failures:
            if failure.method not in (None, method):
                continue
            if failure.path_regex is not None and not re.fullmatch(failure.path_regex, path):
                continue
            if failure.times is not None:
                if failure.times <= 0:
                    continue
                failure.times -= 1
            return failure
        return None

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        m = re.fullmatch(r"/pods/([^/]+)(/events|/schedule-removal)?", path)
        if method == "GET" and path == "/version":
            return 200, {"version": "fake-1.0", "features": []}
        if method == "GET" and path == "/pods":
            return 200, self._list_pods()
        if m and method == "GET" and m.group(2) is None:
            pod = self._pod(m.group(1))
            return (200, self._public(pod)) if pod else (404, {"detail": "Pod not found"})
        if m and method == "DELETE" and m.group(2) is None:
            pod = self._pod(m.group(1))
            if pod is None:
                return 404, {"detail": "Pod not found"}
            self.pods.remove(pod)
            return 200, {"success": True, "message": "Pod removed"}
        if m and method == "GET" and m.group(2) == "/events":
            return 200, []
        if m and method == "POST" and m.group(2) == "/schedule-removal":
            pod = self._pod(m.group(1))
            if pod is None:
                return 404, {"detail": "Pod not found"}
            pod["removal_scheduled_at"] = (body or {}).get("removal_scheduled_at")
            return 200, {"success": True}
        if method == "GET" and path == "/executors":
            return 200, self._list_executors(query)
        if method == "GET" and path == "/executors/default-docker-image":
            return 200, [{"docker_image": PYTORCH_IMAGE, "docker_image_tag": PYTORCH_TAG}]
        rent = re.fullmatch(r"/executors/([^/]+)/rent", path)
        if rent and method == "POST":
            return self._rent(rent.group(1), body or {})
        if method == "GET" and path == "/machines":
            names = sorted({e["machine_name"] for e in self.executors})
            return 200, [{"name": name} for name in names]
        if method == "GET" and path == "/templates":
            return 200, self.templates
        tmpl = re.fullmatch(r"/templates/([^/]+)", path)
        if tmpl and method == "GET":
            found = next((t for t in self.templates if t["id"] == tmpl.group(1)), None)
            return (200, found) if found else (404, {"detail": "Template not found"})
        if method == "GET" and path == "/users/me":
            return 200, {"id": "user-1", "email": "user@example.com", "balance": 100.0}
        if path == "/ssh-keys" and method == "GET":
            return 200, self.ssh_keys
        if path == "/ssh-keys" and method == "POST":
            key = {"id": str(uuidlib.uuid4()), **(body or {}), "created_at": _now()}
            self.ssh_keys.append(key)
            return 200, key
        if path == "/volumes" and method == "GET":
            return 200, self.volumes
        if path == "/volumes" and method == "POST":
            volume = {
                "id": str(uuidlib.uuid4()),
                "name": (body or {}).get("name", ""),
                "description": (body or {}).get("description", ""),
                "created_at": _now(),
                "current_size_bytes": 0,
            }
            self.volumes.append(volume)
            return 200, volume
        return 404, {"detail": "Not Found"}

    def _pod(self, pod_id: str) -> dict[str, Any] | None:
        return next((p for p in self.pods if p["id"] == pod_id), None)

    @staticmethod
    def _public(pod: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in pod.items() if not k.startswith("_")}

    def _list_pods(self) -> list[dict[str, Any]]:
        for pod in self.pods:
            if pod["status"] != "PENDING" or pod["id"] not in self._pending:
                continue
            left = self._pending[pod["id"]]
            if left is None:
                continue  # pending forever
            if left <= 0:
                pod["status"] = "RUNNING"
                pod["ssh_connect_cmd"] = pod["_ssh"]
                del self._pending[pod["id"]]
            else:
                self._pending[pod["id"]] = left - 1
        return [self._public(p) for p in self.pods]

    def _list_executors(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        rows = [e for e in self.executors if e["status"] == "available"]
        if "machine_names" in query:
            wanted = {name for value in query["machine_names"] for name in value.split(",")}
            rows = [e for e in rows if e["machine_name"] in wanted]
        return rows

    def _rent(self, executor_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        executor = next((e for e in self.executors if e["id"] == executor_id), None)
        if executor is None:
            return 404, {"detail": "Executor not found"}
        if executor["status"] != "available":
            return 409, {"detail": "Executor is already rented"}
        if not body.get("user_public_key"):
            return 400, {"detail": "user_public_key is required"}
        if not body.get("template_id") and not body.get("dockerfile_content"):
            return 400, {"detail": "template_id is required"}
        volume_id = body.get("volume_id")
        if volume_id and not any(v["id"] == volume_id for v in self.volumes):
            return 404, {"detail": "Volume not found"}
        executor["status"] = "rented"
        self._next_host += 1
        n = self._next_host
        pod_id = str(uuidlib.uuid4())
        host, port = self.rent_ssh or (f"198.51.100.{n}", 40000 + n)
        self.pods.append(
            {
                "id": pod_id,
                "pod_name": body.get("pod_name", ""),
                "status": "PENDING",
                "ssh_connect_cmd": None,
                "ports_mapping": {"22": port},
                "created_at": _now(),
                "updated_at": _now(),
                "executor": {k: v for k, v in executor.items() if k != "status"},
                "template": {"id": body.get("template_id")},
                "removal_scheduled_at": None,
                "gpu_count": str(body.get("gpu_count") or executor["available_gpu_count"]),
                "_ssh": f"ssh root@{host} -p {port}",
                **({"local_volume_path": self.volume_mount} if volume_id else {}),
            }
        )
        self._pending[pod_id] = self.rent_pending_polls
        return 200, {"success": True, "pod_id": pod_id}


def _make_handler(api: FakeLiumAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            status, payload = api.handle(self.command, self.path, body, self.headers.get("X-API-KEY"))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass  # quiet: tests read api.requests instead

    return Handler
