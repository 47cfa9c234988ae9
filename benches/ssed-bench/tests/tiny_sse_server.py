#!/usr/bin/env python3
"""A tiny SSE broadcast server, the second server of ssed-bench's sweep test (tests/sweep.rs).

    python3 tiny_sse_server.py PORT

GET /events opens a stream (close-delimited, like nchan's) of every event published after it;
POST /events publishes the request body as one event to every open stream and answers its id.
One thread per connection, from the standard library only: real enough for a few hundred
subscribers on loopback, which is all the test asks of it.
"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hub:
    def __init__(self):
        self.lock = threading.Lock()
        self.streams = set()
        self.last_id = 0

    def publish(self, data):
        with self.lock:
            self.last_id += 1
            frame = b"id: %d\ndata: %s\n\n" % (self.last_id, data)
            for stream in list(self.streams):
                try:
                    stream.write(frame)
                except OSError:
                    self.streams.discard(stream)
            return self.last_id


HUB = Hub()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive publishes; the streams are close-delimited

    def do_GET(self):
        if self.path.split("?")[0] != "/events":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        with HUB.lock:
            HUB.streams.add(self.wfile)
        try:
            # Held until the subscriber goes away (its read returns end of file).
            while self.rfile.read(1):
                pass
        except OSError:
            pass
        finally:
            with HUB.lock:
                HUB.streams.discard(self.wfile)
            self.close_connection = True

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if b"\n" in body or b"\r" in body:
            self.send_error(400, "one line per event")
            return
        answer = b"%d" % HUB.publish(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the bench opens its streams thousands a second


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
