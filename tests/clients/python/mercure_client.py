"""Publishes to ssed's Mercure hub with pymercure and receives the updates with httpx-sse and with
pymercure's own consumer.

Usage: mercure_client.py HUB_URL SECRET ID1 DATA1 ID2 DATA2

HUB_URL is the hub (http://HOST:PORT/.well-known/mercure), SECRET the hub's HS256 key; the tokens are
minted here with PyJWT, as an application publishing to a hub would (pymercure takes a ready token).
Two updates are published on https://example.com/books/1, (ID1, DATA1) and (ID2, DATA2); between them, two
publications the hub must refuse (a token signed with another key, and one whose rights cover other
topics).

Prints one JSON object per line, flushed at once, so the Rust test (tests/it/external) can follow along:
  {"type": "open", "status": 200, "content_type": "..."}   httpx-sse's response head
  {"type": "published", "id": "..."}                      what pymercure's publish returned
  {"type": "refused", "error": "UnauthorizedPublisherError"|"PublishRejectedError"}
  {"type": "event", "id": "...", "event": "...", "data": "..."}     each update httpx-sse yields
  {"type": "consumed", "id": "...", "event": "...", "data": "..."}  each one pymercure's consumer gets
  {"type": "done"}                                        after two of each; the script then exits 0
On a stream that ends early or an update that does not come in time: {"type": "failed", ...}, exit 1.
"""

import json
import queue
import sys
import threading
import time
import urllib.parse

import httpx
import jwt
from httpx_sse import connect_sse
from pymercure.consumer import Consumer
from pymercure.exceptions import PublishRejectedError, UnauthorizedPublisherError
from pymercure.message import Message
from pymercure.publisher.sync import SyncPublisher

TOPIC = "https://example.com/books/1"
WAIT = 20.0
_out = threading.Lock()


def emit(**fields):
    # One line per write under a lock: the consumer's thread prints too.
    with _out:
        # ensure_ascii keeps stdout pure ASCII whatever the locale; the test decodes the \\u escapes.
        sys.stdout.write(json.dumps(fields, ensure_ascii=True) + "\n")
        sys.stdout.flush()


def token(secret, hub_url, actions, topics):
    """A current-revision Mercure token: RFC 9068 (typ at+jwt), rights in authorization_details."""
    now = int(time.time())
    claims = {
        "iss": "https://localhost",
        # The hub's URL as this client reaches it: the audience ssed derives from the Host header.
        "aud": hub_url,
        "sub": "python-publisher",
        "iat": now,
        "exp": now + 300,
        "authorization_details": [
            {
                "type": "https://mercure.rocks/authorization-detail",
                "actions": actions,
                "topics": [{"match": m, "match_type": t} for m, t in topics],
            }
        ],
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "at+jwt"})


def main():
    hub_url, secret = sys.argv[1:3]
    updates = [(sys.argv[3], sys.argv[4]), (sys.argv[5], sys.argv[6])]
    rights = [("https://example.com/books/:id", "urlpattern")]
    good = token(secret, hub_url, ["publish"], rights)
    forged = token(secret + "-not-the-hubs", hub_url, ["publish"], rights)
    elsewhere = token(secret, hub_url, ["publish"], [("https://example.com/users/:id", "urlpattern")])

    # pymercure's consumer: the pre-standardization `topic` query with a URI template, on a thread.
    consumed = queue.Queue()
    consumer = Consumer(hub_url, ["https://example.com/books/{id}"], consumed.put)
    consumer.daemon = True
    consumer.start_consumption()

    subscription = hub_url + "?" + urllib.parse.urlencode({"match_urlpattern": "https://example.com/books/:id"})
    with httpx.Client(timeout=httpx.Timeout(WAIT)) as client:
        with connect_sse(client, "GET", subscription) as source:
            response = source.response
            emit(type="open", status=response.status_code, content_type=response.headers.get("content-type", ""))

            message_id, data = updates[0]
            emit(type="published", id=SyncPublisher(hub_url, good).publish(Message([TOPIC], data, message_id=message_id)))
            for bad in (forged, elsewhere):
                try:
                    result = SyncPublisher(hub_url, bad).publish(Message([TOPIC], "must not arrive"))
                    emit(type="accepted", id=result)
                except (UnauthorizedPublisherError, PublishRejectedError) as e:
                    emit(type="refused", error=type(e).__name__)
            message_id, data = updates[1]
            emit(type="published", id=SyncPublisher(hub_url, good).publish(Message([TOPIC], data, message_id=message_id)))

            seen = 0
            for sse in source.iter_sse():
                emit(type="event", id=sse.id, event=sse.event, data=sse.data)
                seen += 1
                if seen == len(updates):
                    break
            else:
                emit(type="failed", reason="the httpx-sse stream ended")
                return 1

    for _ in updates:
        try:
            message = consumed.get(timeout=WAIT)
        except queue.Empty:
            emit(type="failed", reason="pymercure's consumer got nothing in time")
            return 1
        emit(type="consumed", id=message.message_id, event=message.event_type, data=message.data)
    emit(type="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
