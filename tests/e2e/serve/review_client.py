#!/usr/bin/env python3
# Hand-made NBD clients for the review tests of `rbdgw serve`
# (test-serve-review-*.sh), plain NBD over TCP:
#   review_client.py drip HOST PORT SECONDS
#       trickles a valid handshake (flags, then NBD_OPT_LIST) one byte a
#       second for SECONDS, then sends the rest; prints "open" if the server
#       still answers, "closed" if it had cut the connection.
#   review_client.py mixed HOST PORT EXPORT COUNT MIB
#       after NBD_OPT_GO, pipelines COUNT pairs of (READ MIB MiB, WRITE MIB MiB
#       of a pattern) while another thread reads the replies, as a client
#       with requests in flight both ways does; prints "done N replies" or
#       "stuck after N of M replies" (nothing for 30 s).
#   review_client.py goname HOST PORT NAME
#       NBD_OPT_GO with NAME (Python escapes such as \\n are decoded); prints
#       "refused" or "opened".
import socket, struct, sys, threading, time

MAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513
SIMPLE_REPLY = 0x67446698


def recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed")
        b += c
    return bytes(b)


def drip(host, port, seconds):
    s = socket.create_connection((host, int(port)))
    s.settimeout(60)
    try:
        recv_exact(s, 18)
        msg = struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, 3, 0)
        t0 = time.time()
        i = 0
        while time.time() - t0 < seconds and i < len(msg) - 1:
            s.sendall(msg[i:i + 1])
            i += 1
            time.sleep(1)
        s.sendall(msg[i:])
        r = s.recv(20)
        print("open" if r else "closed")
    except (EOFError, BrokenPipeError, ConnectionResetError):
        print("closed")


def go(host, port, name):
    s = socket.create_connection((host, int(port)))
    s.settimeout(30)
    recv_exact(s, 18)
    s.sendall(struct.pack(">I", 3))
    nb = name.encode("latin-1")
    data = struct.pack(">I", len(nb)) + nb + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", IHAVEOPT, 7, len(data)) + data)
    size = None
    while True:
        _, _, typ, ln = struct.unpack(">QIII", recv_exact(s, 20))
        d = recv_exact(s, ln)
        if typ == 3 and struct.unpack(">H", d[:2])[0] == 0:
            size = struct.unpack(">Q", d[2:10])[0]
        if typ == 1:
            return s, size
        if typ & 0x80000000:
            raise SystemExit("GO refused: %r" % d)


def mixed(host, port, name, count, mib):
    s, size = go(host, port, name)
    n = mib << 20
    slots = size // n
    pattern = bytes(range(256)) * (n // 256)
    expect = {}
    lock = threading.Lock()
    got = [0]
    err = []

    def rx():
        try:
            while got[0] < 2 * count:
                magic, error, handle = struct.unpack(">IIQ", recv_exact(s, 16))
                if magic != SIMPLE_REPLY:
                    err.append("bad reply magic %x" % magic)
                    return
                with lock:
                    kind = expect.pop(handle)
                if error:
                    err.append("request %d failed: error %d" % (handle, error))
                    return
                if kind == "r":
                    recv_exact(s, n)
                got[0] += 1
        except Exception as e:  # timeout: nothing arrived for 30 s
            err.append(repr(e))

    t = threading.Thread(target=rx)
    t.start()
    try:
        for i in range(count):
            off = (i % slots) * n
            for kind, typ in (("r", 0), ("w", 1)):
                h = 2 * i + typ
                with lock:
                    expect[h] = kind
                s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, typ, h, off, n))
                if typ == 1:
                    s.sendall(pattern)
    except Exception as e:
        err.append("send: " + repr(e))
    t.join()
    if got[0] == 2 * count:
        s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, 2, 0, 0, 0))  # NBD_CMD_DISC
        print("done %d replies" % got[0])
    else:
        print("stuck after %d of %d replies (%s)" % (got[0], 2 * count, "; ".join(err)))


if __name__ == "__main__":
    if sys.argv[1] == "drip":
        drip(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "goname":
        try:
            go(sys.argv[2], sys.argv[3], sys.argv[4].encode().decode("unicode_escape"))
            print("opened")
        except SystemExit:
            print("refused")
    elif sys.argv[1] == "mixed":
        mixed(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
