"""An HTTP proxy on loopback that loses replies: it forwards every request to the real server and,
for the requests a rule picks, lets the server do the work but never gives the client the answer
(it closes the connection, or holds it past the client's timeout first). What a client sees when a
reply is lost on the network after the server got the request."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Tuple

# (method, path, body) -> "drop" (close after the server answered), "hang" (hold, then close) or None
Rule = Callable[[str, str, bytes], Optional[str]]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        return  # a client that gave up on a held reply (its timeout) is what this proxy is for


class LossyProxy:
    def __init__(self, upstream_port: int, rule: Rule, hang_secs: float = 3.0) -> None:
        self.upstream_port = upstream_port
        self.rule = rule
        self.hang_secs = hang_secs
        self.lost: List[Tuple[str, str]] = []  # (method, path) of every reply lost, in order
        self.counts: Dict[str, int] = {}  # path -> requests seen
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                return

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                with proxy.lock:
                    proxy.counts[path] = proxy.counts.get(path, 0) + 1
                    verdict = proxy.rule(self.command, path, body)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
                upstream.close()
                if verdict:  # the server did the work; the client never hears of it
                    with proxy.lock:
                        proxy.lost.append((self.command, path))
                    if verdict == "hang":
                        time.sleep(proxy.hang_secs)
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _relay  # noqa: N815

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> LossyProxy:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
