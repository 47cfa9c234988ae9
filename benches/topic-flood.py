#!/usr/bin/env python3
# Sequential publishes on one keep-alive connection: "flood" names 64 new 128-byte topics per event, "plain"
# publishes 100-byte events to one topic. Read VmRSS from /proc/PID/status between runs (docs/security.md).
# Usage: topic-flood.py PORT flood|plain COUNT   (loopback only)
import socket, sys
port=int(sys.argv[1]); mode=sys.argv[2]; n=int(sys.argv[3])
s=socket.create_connection(("127.0.0.1",port)); f=s.makefile('rb')
def pub(q, body):
    s.sendall(("POST /events?%s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (q, len(body))).encode()+body)
    f.readline(); n=0
    while True:
        h=f.readline()
        if h==b"\r\n": break
        if h.lower().startswith(b"content-length"): n=int(h.split(b":")[1])
    f.read(n)
pad="t"*118
for i in range(n):
    if mode=="plain": pub("topic=plain", b"p"*100)
    else: pub("&".join("topic=%06d.%02d.%s"%(i,j,pad) for j in range(64)), b"x")
