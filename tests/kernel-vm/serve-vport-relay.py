#!/usr/bin/env python3
"""Guest half of test-serve-nbd-client-tls.sh: the guest has no IP network,
so a local client (nbd-client) connects to 127.0.0.1:PORT and this relay
copies its bytes to and from a virtio-serial port, whose host end qemu has
connected to rbdgw serve's socket. One connection, then exit.

usage: serve-vport-relay.py PORT-NAME TCP-PORT READY-FILE"""
import os
import select
import socket
import sys


def find_port(name):
    base = "/sys/class/virtio-ports"
    for d in sorted(os.listdir(base)):
        try:
            with open(os.path.join(base, d, "name")) as f:
                if f.read().strip() == name:
                    return "/dev/" + d
        except OSError:
            pass
    sys.exit(f"serve-vport-relay: no virtio-serial port named {name!r}")


def main():
    name, tcp_port, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    dev = find_port(name)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", tcp_port))
    srv.listen(1)
    open(ready, "w").close()
    conn, _ = srv.accept()
    srv.close()
    port = os.open(dev, os.O_RDWR)
    try:
        while True:
            r, _, _ = select.select([conn, port], [], [])
            if conn in r:
                data = conn.recv(262144)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    n = os.write(port, view)
                    view = view[n:]
            if port in r:
                data = os.read(port, 262144)
                if not data:
                    break
                conn.sendall(data)
    finally:
        conn.close()
        os.close(port)


if __name__ == "__main__":
    main()
