#!/usr/bin/env python3
# Pipelined publishers naming 64 new topics per event against a running ssed (--data-dir, --fsync batch):
# prints the server CPU used and the slowest /health answer meanwhile. docs/security.md, "The loop, lag and topic memory".
# Usage: held-flood.py PORT CONNECTIONS PUBLISHES_PER_CONNECTION SERVER_PID   (loopback only)
import socket, sys, threading, time, os
port, conns, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]); pid = int(sys.argv[4])
addr = ("127.0.0.1", port)
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
done = False; slowest = [0.0]
def probe():
    while not done:
        t = time.time(); s = socket.create_connection(addr); s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        while s.recv(4096): pass
        slowest[0] = max(slowest[0], time.time() - t); s.close(); time.sleep(0.005)
def publisher(c):
    s = socket.create_connection(addr)
    def send():
        for i in range(per):
            q = "&".join(f"topic=c{c}.{i}.{j}" for j in range(64))
            s.sendall(f"POST /events?{q} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx".encode())
    w = threading.Thread(target=send); w.start()
    got = 0; buf = b""
    while got < per:
        d = s.recv(65536)
        if not d: raise SystemExit("closed")
        buf += d; got = buf.count(b"HTTP/1.1 200")
    w.join()
c0 = cpu(); t0 = time.time()
p = threading.Thread(target=probe); p.start()
ts = [threading.Thread(target=publisher, args=(c,)) for c in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
done = True; p.join()
print(f"conns={conns} per={per}: wall {time.time()-t0:.2f} s, server CPU {cpu()-c0:.2f} s, slowest /health {slowest[0]*1000:.0f} ms")
