#!/usr/bin/python3
"""silent-proxy.py LISTEN TARGET LOG MODE: a unix-socket proxy in front of an
NBD server whose later connections are accepted and never answered (a
gateway whose accepting thread lives but whose handshakes hang).

MODE first: the first connection is relayed to TARGET, every later one
  is left silent.
MODE until-flag: every connection is relayed until the file LISTEN.hang
  appears; then the relayed ones are cut (a gateway restart) and every
  later one is left silent; LISTEN.cut tells that the cut is made.
  Once the file LISTEN.relay appears (holding a number of seconds D),
  every later connection is relayed again, D seconds after it came (a
  gateway back, or one that is slow to answer).

Each silent connection appends a line to LOG. Runs until killed."""
import os
import socket
import sys
import threading
import time

listen_path, target, log, mode = sys.argv[1:]
srv = socket.socket(socket.AF_UNIX)
srv.bind(listen_path)
srv.listen(64)
lock = threading.Lock()
held, relayed = [], []
state = {"first": True, "hung": False}


def pump(a, b):
    try:
        while True:
            d = a.recv(1 << 20)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def relay_later(c, delay):
    time.sleep(delay)
    t = socket.socket(socket.AF_UNIX)
    t.connect(target)
    threading.Thread(target=pump, args=(c, t), daemon=True).start()
    pump(t, c)


def watch_flag():
    while not os.path.exists(listen_path + ".hang"):
        time.sleep(0.05)
    with lock:
        state["hung"] = True
        for s in relayed:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        open(listen_path + ".cut", "w").close()


if mode == "until-flag":
    threading.Thread(target=watch_flag, daemon=True).start()
while True:
    c, _ = srv.accept()
    with lock:
        relay = state["first"] if mode == "first" else not state["hung"]
        state["first"] = False
        if relay:
            t = socket.socket(socket.AF_UNIX)
            t.connect(target)
            relayed.extend((c, t))
            threading.Thread(target=pump, args=(c, t), daemon=True).start()
            threading.Thread(target=pump, args=(t, c), daemon=True).start()
        elif os.path.exists(listen_path + ".relay"):
            with open(listen_path + ".relay") as f:
                delay = float(f.read().strip() or 0)
            threading.Thread(target=relay_later, args=(c, delay), daemon=True).start()
        else:
            held.append(c)
            with open(log, "a") as f:
                f.write("silent\n")
