"""Subscribes to an ssed stream with a real SSE client library and prints what it dispatches.

Usage: sse_client.py {httpx-sse,sseclient-py} URL COUNT

Prints one JSON object per line, flushed at once, so the Rust test (tests/it/external) can follow along:
  {"type": "open", "status": 200, "content_type": "..."}   once the response head has arrived
  {"type": "event", "id": "...", "event": "...", "data": "..."}   for each event the library yields
  {"type": "done"}                                          after COUNT events; the script then exits 0
If the stream ends before COUNT events, prints {"type": "ended"} and exits 1.
"""

import http.client
import json
import sys
import urllib.parse


def emit(**fields):
    # ensure_ascii keeps stdout pure ASCII whatever the locale; the test decodes the \\u escapes.
    sys.stdout.write(json.dumps(fields, ensure_ascii=True) + "\n")
    sys.stdout.flush()


def with_httpx_sse(url, count):
    import httpx
    from httpx_sse import connect_sse

    seen = 0
    timeout = httpx.Timeout(20.0)
    with httpx.Client(timeout=timeout) as client:
        with connect_sse(client, "GET", url) as source:
            response = source.response
            emit(type="open", status=response.status_code, content_type=response.headers.get("content-type", ""))
            for sse in source.iter_sse():
                emit(type="event", id=sse.id, event=sse.event, data=sse.data)
                seen += 1
                if seen == count:
                    emit(type="done")
                    return 0
    emit(type="ended")
    return 1


def with_sseclient_py(url, count):
    import sseclient

    parts = urllib.parse.urlsplit(url)
    path = parts.path + ("?" + parts.query if parts.query else "")
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    connection.request("GET", path, headers={"Accept": "text/event-stream"})
    response = connection.getresponse()
    emit(type="open", status=response.status, content_type=response.getheader("content-type", ""))

    # sseclient-py takes any iterable of byte chunks; read1 returns what has arrived (chunked decoded).
    def chunks():
        while True:
            chunk = response.read1(65536)
            if not chunk:
                return
            yield chunk

    seen = 0
    for event in sseclient.SSEClient(chunks()).events():
        emit(type="event", id=event.id, event=event.event, data=event.data)
        seen += 1
        if seen == count:
            emit(type="done")
            connection.close()
            return 0
    emit(type="ended")
    return 1


def main():
    lib, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if lib == "httpx-sse":
        return with_httpx_sse(url, count)
    if lib == "sseclient-py":
        return with_sseclient_py(url, count)
    sys.exit(f"unknown client library {lib!r}")


if __name__ == "__main__":
    sys.exit(main())
