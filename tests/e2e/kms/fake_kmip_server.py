#!/usr/bin/env python3
"""A misbehaving KMIP server for the tests: a real TLS 1.2 handshake (the
test CA's server certificate), then, per connection, it reads one request
and answers according to MODE:
  garbage    16 bytes that are no TTLV message
  truncated  a Response Message header announcing 64 bytes, 10 of them, close
  malformed  a whole message whose inner item overruns its structure
  silent     nothing (the client's read timeout must end the wait)
  usage: fake_kmip_server.py CERT KEY PORTFILE MODE
"""
import os
import socket
import ssl
import sys
import threading


def read_request(s):
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


def serve(conn, ctx, mode):
    try:
        s = ctx.wrap_socket(conn, server_side=True)
        read_request(s)
        if mode == "garbage":
            s.sendall(b"\xde\xad\xbe\xef garbage!!!!")
        elif mode == "truncated":
            s.sendall(bytes.fromhex("42007B0100000040") + b"\x42\x00\x7a\x01\x00\x00\x00\x38\x42\x00")
        elif mode == "malformed":
            s.sendall(bytes.fromhex("42007B0100000010" "4200780200000010" "0000000100000000"))
        elif mode == "silent":
            threading.Event().wait(60)
        s.close()
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
