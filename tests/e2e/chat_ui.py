"""A stand-in chat UI that behaves like the real ones where the site's layout matters.

Usage: chat_ui.py PORT LOG_FILE [open-webui|openclaw]

Like Open WebUI 0.12: its own API under /api/ (`/api/config` is the page's first call,
`/api/version` is asked on every socket connect and the page reloads itself when the answer is
not its own version, `/api/v1/...` for everything else, `/api/v1/files/{id}/content/html` framed
by the page), a Socket.IO endpoint at `/ws/socket.io/` that upgrades to a WebSocket, and a page
whose script checks what `/api/config` and `/api/version` answer and shows "Open WebUI Backend
Required" when they are not its own. Like OpenClaw's web chat (`openclaw`): its own
`/api/users/...`, `/api/chat/media/outgoing/...`, `/api/artifacts/download/...`, and a
Content-Security-Policy of its own with the hash of an inline script.

Every request is appended to LOG_FILE as one JSON line (method, path, upgrade), so a test can
prove which requests reached the UI, and none of them the gateway.
"""
import base64
import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "0.12.4"
INLINE = "document.documentElement.dataset.theme='dark';"
INLINE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(INLINE.encode()).digest()).decode()

PAGE = """<!doctype html>
<html><head><title>Open WebUI</title><script>%s</script></head>
<body><div id="status">loading</div>
<script src="/_app/immutable/entry/start.js"></script></body></html>
""" % INLINE

# The page's check, as Open WebUI's layout does it: its own backend must answer /api/config
# with its name, and /api/version with its version.
START_JS = """
(async () => {
  const el = document.getElementById('status');
  try {
    const config = await (await fetch('/api/config')).json();
    const version = await (await fetch('/api/version')).json();
    el.textContent = (config.name === 'Open WebUI' && version.version === '%s')
      ? 'backend ok' : 'Open WebUI Backend Required';
  } catch (e) {
    el.textContent = 'Open WebUI Backend Required';
  }
})();
""" % VERSION


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    flavour = "open-webui"
    log_file = None

    def log_message(self, *args):
        pass

    def record(self):
        with open(self.log_file, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "upgrade": self.headers.get("Upgrade")}) + "\n")

    def send(self, status, body, ctype="application/json", extra=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def ui_json(self, obj):
        self.send(200, json.dumps(obj))

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.do_GET()

    def do_GET(self):
        self.record()
        path = self.path.split("?", 1)[0]
        if path.startswith("/ws/socket.io/") and self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers.get("Sec-WebSocket-Key", "")
            accept = base64.b64encode(hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/":
            extra = ()
            if self.flavour == "openclaw":
                extra = (("Content-Security-Policy",
                          f"default-src 'self'; script-src 'self' '{INLINE_HASH}'; "
                          "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),)
            self.send(200, PAGE, "text/html; charset=utf-8", extra)
        elif path == "/_app/immutable/entry/start.js":
            self.send(200, START_JS, "application/javascript")
        elif path == "/api/config":
            self.ui_json({"name": "Open WebUI", "version": VERSION, "features": {}})
        elif path == "/api/version":
            self.ui_json({"version": VERSION})
        elif path.startswith("/api/v1/files/") and path.endswith("/content/html"):
            self.send(200, "<html><body>preview</body></html>", "text/html; charset=utf-8")
        elif path.startswith(("/api/v1/", "/api/users/", "/api/chat/media/", "/api/artifacts/")):
            self.ui_json({"ui": True, "path": path})
        else:
            self.send(404, json.dumps({"detail": "Not Found"}))


def main():
    port, log = int(sys.argv[1]), sys.argv[2]
    Handler.log_file = log
    Handler.flavour = sys.argv[3] if len(sys.argv) > 3 else "open-webui"
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
