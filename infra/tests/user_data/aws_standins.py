"""The two AWS endpoints moto cannot be here, as small local HTTP servers (README.md):

- IMDS: one per host (the instance metadata service answers only the instance asking). IMDSv2:
  a token from PUT /latest/api/token, required on every GET; instance-id, local-ipv4,
  placement/region, placement/availability-zone.
- Lambda: the Invoke API (what the agents' fast path and `aws lambda invoke` call) and the Lambda
  runtime API, which the real coordinator binary (`bootstrap`) polls as it does on AWS. moto
  would run the function in Docker; here it runs as a local process with the deployed function's
  environment. One execution slot (reserved concurrency 1): invocations queue, asynchronous
  ones (`Event`) are answered 202 at once as Lambda does.
"""
import json
import queue
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # the test prints what matters
        pass

    def reply(self, status, body=b"", headers=None):
        try:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (shutdown)
            pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""


def serve(handler_cls, host="127.0.0.1"):
    server = ThreadingHTTPServer((host, 0), handler_cls)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


def imds(identity):
    """An IMDSv2 endpoint answering `identity` (meta-data path -> value)."""
    token = uuid.uuid4().hex

    class Handler(_Quiet):
        def do_PUT(self):
            self.body()
            if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                self.reply(200, token.encode())
            else:
                self.reply(400)

        def do_GET(self):
            if self.headers.get("X-aws-ec2-metadata-token") != token:
                return self.reply(401)
            path = self.path.removeprefix("/latest/meta-data/")
            if path in identity:
                self.reply(200, identity[path].encode(), {"Content-Type": "text/plain"})
            else:
                self.reply(404)

    return serve(Handler)


class LocalLambda:
    """Invoke API + runtime API for one function. `invocations` logs what was asked and answered."""

    def __init__(self, function_name, function_arn, timeout_s):
        self.function_name = function_name
        self.function_arn = function_arn
        self.timeout_s = timeout_s
        self.pending = queue.Queue()
        self.running = {}
        self.invocations = []
        self.lock = threading.Lock()
        outer = self

        class Handler(_Quiet):
            def do_POST(self):
                path = urllib.parse.urlparse(self.path)
                parts = [urllib.parse.unquote(p) for p in path.path.split("/")]
                body = self.body()
                if path.path.startswith("/2015-03-31/functions/") and parts[-1] == "invocations":
                    return outer._invoke(self, parts[3], urllib.parse.parse_qs(path.query), body)
                if path.path.startswith("/2018-06-01/runtime/invocation/"):
                    return outer._result(self, parts[4], parts[5], body)
                if path.path == "/2018-06-01/runtime/init/error":
                    outer._log({"init_error": body.decode(errors="replace")})
                    return self.reply(202, b"{}")
                self.reply(404)

            def do_GET(self):
                if self.path == "/2018-06-01/runtime/invocation/next":
                    return outer._next(self)
                self.reply(404)

        self.server, self.url = serve(Handler)

    def _log(self, entry):
        with self.lock:
            self.invocations.append({"t": time.time(), **entry})

    def _invoke(self, h, name, query, payload):
        qualifier = (query.get("Qualifier") or [None])[0]
        if name.startswith("arn:"):
            name = name.split(":function:", 1)[1]
        base, _, alias = name.partition(":")
        alias = alias or qualifier
        if base != self.function_name:
            return h.reply(404, json.dumps({"Type": "User", "message": f"Function not found: {name}"}).encode(),
                           {"Content-Type": "application/json", "x-amzn-ErrorType": "ResourceNotFoundException"})
        kind = h.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        inv = {"id": str(uuid.uuid4()), "payload": payload, "arn": self.function_arn + (f":{alias}" if alias else ""),
               "done": threading.Event(), "result": None, "error": False}
        self._log({"id": inv["id"], "type": kind, "arn": inv["arn"], "payload": payload.decode(errors="replace")})
        self.pending.put(inv)
        if kind == "Event":
            return h.reply(202, b"", {"x-amzn-RequestId": inv["id"]})
        if not inv["done"].wait(self.timeout_s + 10):
            return h.reply(200, b'{"errorMessage":"Task timed out"}', {"X-Amz-Function-Error": "Unhandled"})
        headers = {"Content-Type": "application/json", "x-amzn-RequestId": inv["id"]}
        if inv["error"]:
            headers["X-Amz-Function-Error"] = "Unhandled"
        h.reply(200, inv["result"], headers)

    def _next(self, h):
        while True:
            try:
                inv = self.pending.get(timeout=1)
                break
            except queue.Empty:
                if getattr(self, "closed", False):
                    return h.reply(503)
        with self.lock:
            self.running[inv["id"]] = inv
        h.reply(200, inv["payload"], {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": inv["id"],
            "Lambda-Runtime-Deadline-Ms": str(int((time.time() + self.timeout_s) * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": inv["arn"],
            "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}",
        })

    def _result(self, h, request_id, kind, body):
        with self.lock:
            inv = self.running.pop(request_id, None)
        if inv is None:
            return h.reply(404)
        inv["result"], inv["error"] = body, kind == "error"
        self._log({"id": request_id, "outcome": kind, "body": body.decode(errors="replace")[:2000]})
        inv["done"].set()
        h.reply(202, b"{}")

    def close(self):
        self.closed = True
        self.server.shutdown()
