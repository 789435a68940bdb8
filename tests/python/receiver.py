"""A webhook receiver for otpgate's tests that checks every request with the Standard Webhooks
project's own Python library (PyPI `standardwebhooks`), not with any code of otpgate's.

Usage: receiver.py WHSEC_SECRET. Prints one JSON object per line: first
{"event": "listening", "port": N}, then per request {"event": "request", "id", "type",
"verified", "error"}. Answers 204 to a request that verifies, 401 otherwise.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HOOK = Webhook(sys.argv[1])
# One line per request: threads printing at once would interleave their lines.
PRINTING = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        line = {"event": "request", "id": self.headers.get("webhook-id")}
        try:
            payload = HOOK.verify(body, dict(self.headers))
            line.update(verified=True, type=payload.get("type"))
            status = 204
        except WebhookVerificationError as e:
            line.update(verified=False, error=str(e))
            status = 401
        with PRINTING:
            print(json.dumps(line), flush=True)
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"event": "listening", "port": server.server_address[1]}), flush=True)
server.serve_forever()
