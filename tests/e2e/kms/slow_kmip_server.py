#!/usr/bin/env python3
"""KMIP servers that are slow rather than wrong, for the tests:
  trickle  a real TLS 1.2 handshake, reads one request, then sends a Response
           Message header announcing 4096 bytes and one more byte every
           0.2 s (a reply that never ends within any read timeout)
  notls    accepts TCP and reads, never answers the TLS ClientHello
  usage: slow_kmip_server.py CERT KEY PORTFILE MODE
"""
import os
import socket
import ssl
import sys
import threading
import time


def serve(conn, ctx, mode):
    try:
        if mode == "notls":
            while conn.recv(4096):
                pass
            return
        s = ctx.wrap_socket(conn, server_side=True)
        hdr = b""
        while len(hdr) < 8:
            b = s.recv(8 - len(hdr))
            if not b:
                return
            hdr += b
        n = int.from_bytes(hdr[4:8], "big")
        while n > 0:
            b = s.recv(min(n, 65536))
            if not b:
                return
            n -= len(b)
        s.sendall(bytes.fromhex("42007B0100001000"))
        for _ in range(4096):
            time.sleep(0.2)
            s.sendall(b"\x42")
    except (OSError, ssl.SSLError):
        pass


def main():
    cert, key, portfile, mode = sys.argv[1:5]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(ls.getsockname()[1]))
    os.rename(portfile + ".tmp", portfile)
    while True:
        conn, _ = ls.accept()
        threading.Thread(target=serve, args=(conn, ctx, mode), daemon=True).start()


if __name__ == "__main__":
    main()
