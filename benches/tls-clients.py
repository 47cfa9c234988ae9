#!/usr/bin/env python3
# TLS clients for benches/tls.sh (loopback only): many EventSource-like subscribers over TLS, a flood of
# handshakes, and a delivery count. Python's asyncio and ssl (OpenSSL): ssed-bench speaks plain HTTP only.
#
#   tls-clients.py hold    PORT N CA            hold N idle TLS streams (topic=idle); prints "ready N",
#                                               then waits for stdin to close
#   tls-clients.py flood   PORT N CA            N new TLS connections as fast as they go (at most 500
#                                               handshakes in flight), each GET /health then close;
#                                               prints the handshakes per second
#   tls-clients.py blast   PORT N CA            N TCP connections first, then one ClientHello on each as
#                                               fast as the loop sends (the server gets them all at once,
#                                               and each costs it a key exchange and a signature); prints
#                                               when every connection has its server's answer
#   tls-clients.py deliver PORT N CA K PUBPORT  N streams (TLS, or plain with CA "-"), then K events POSTed
#                                               back to back to http://127.0.0.1:PUBPORT (PUBPATH env, default
#                                               /events?topic=d); prints when every stream has all K
import asyncio, os, selectors, socket, ssl, sys, time

HOST = "127.0.0.1"


def context(ca):
    if ca == "-":
        return None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def stream(port, ctx, path, ready, counts=None, index=0, until=None):
    reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname="localhost" if ctx else None)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"stream refused: {head[:80]!r}")
    ready.release()
    if counts is None:
        await until.wait()
    else:
        tail = b""
        while counts[index] < counts[-1]:
            data = await reader.read(65536)
            if not data:
                raise SystemExit("a stream ended early")
            data = tail + data
            counts[index] += data.count(b"\ndata: ")
            tail = data[-8:]
    # No TLS close handshake: a peer that never answers close_notify would hold the run for the
    # 30 s ssl_shutdown_timeout of every stream.
    writer.transport.abort()


async def open_streams(n, open_one):
    """Opens n streams (open_one(i, ready) each), 200 at a time, and prints `ready N` once every one
    has its response head; returns their tasks."""
    ready = asyncio.Semaphore(0)
    tasks = []
    for i in range(n):
        tasks.append(asyncio.ensure_future(open_one(i, ready)))
        if i % 200 == 199:
            for _ in range(200):
                await ready.acquire()
    for _ in range(n % 200):
        await ready.acquire()
    print(f"ready {n}", flush=True)
    return tasks


async def flood(port, n, ca):
    ctx = context(ca)
    gate = asyncio.Semaphore(500)
    failures = [0]

    async def one():
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname="localhost")
                writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                await writer.drain()
                await reader.read()
                writer.close()
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                failures[0] += 1

    t0 = time.time()
    await asyncio.gather(*(one() for _ in range(n)))
    took = time.time() - t0
    print(f"flood {n} TLS connections in {took:.2f} s ({n / took:.0f}/s), {failures[0]} failed", flush=True)


async def deliver(port, n, ca, k, pubport):
    ctx = context(ca)
    counts = [0] * n + [k]
    tasks = await open_streams(n, lambda i, ready: stream(port, ctx, "/events?topic=d", ready, counts, i))
    await asyncio.sleep(0.5)
    # The shell samples the server's CPU when it reads this line and when the run ends.
    print("publishing", flush=True)
    path = os.environ.get("PUBPATH", "/events?topic=d")
    reader, writer = await asyncio.open_connection(HOST, pubport)
    for i in range(k):
        body = f"event {i} " + "x" * 80
        writer.write(f"POST {path} HTTP/1.1\r\nHost: l\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
        await reader.readexactly(length)
    await asyncio.gather(*tasks)
    print(f"delivered {n * k}", flush=True)


def blast(port, n, ca):
    # One ClientHello, made by OpenSSL, sent on every connection: the server makes its own key share
    # and signature for each, which is the work a handshake flood costs it.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    socks = [socket.create_connection((HOST, port)) for _ in range(n)]
    t0 = time.time()
    for sock in socks:
        sock.sendall(hello)
    sent = time.time() - t0
    sel = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    waiting = n
    deadline = time.time() + 60
    while waiting and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            sel.unregister(key.fileobj)
            waiting -= 1
    took = time.time() - t0
    for sock in socks:
        sock.close()
    print(f"blast {n} ClientHellos sent in {sent * 1000:.0f} ms, all answered after {took:.2f} s, {waiting} unanswered", flush=True)


def main():
    mode, port, n, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if mode == "hold":
        asyncio.run(hold(port, n, ca))
    elif mode == "blast":
        blast(port, n, ca)
    elif mode == "flood":
        asyncio.run(flood(port, n, ca))
    elif mode == "deliver":
        asyncio.run(deliver(port, n, ca, int(sys.argv[5]), int(sys.argv[6])))
    else:
        raise SystemExit(f"unknown mode {mode}")


async def hold(port, n, ca):
    ctx = context(ca)
    until = asyncio.Event()
    tasks = await open_streams(n, lambda i, ready: stream(port, ctx, "/events?topic=idle", ready, until=until))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    until.set()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    main()
