#!/usr/bin/python3
"""Acknowledged writes, for the tests that kill a gateway between a write
and its flush (tests/e2e/cli, tests/kernel-vm):

  acked_writes.py write DEV BASE COUNT LOG
      COUNT O_DIRECT writes of 64 KiB at BASE + i * 64 KiB, each block a
      pattern naming it; LOG gets the index of each one acknowledged, as
      soon as it is.
  acked_writes.py check CONF IMAGE BASE LOG
      reads the pool 'rbd' image IMAGE with librbd (no gateway): exits 1
      unless every block in LOG holds its pattern; prints the count.
"""
import mmap
import os
import sys

BLOCK = 65536


def pattern(i):
    return (b'block-%06d-' % i) * (BLOCK // 13) + b'\0' * (BLOCK % 13)


def write(dev, base, count, log):
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    with open(log, 'w', buffering=1) as acked:
        for i in range(count):
            buf.seek(0)
            buf.write(pattern(i))
            os.pwrite(fd, buf, base + i * BLOCK)
            print(i, file=acked)
    os.close(fd)


def check(conf, name, base, log):
    import rados
    import rbd
    blocks = [int(l) for l in open(log) if l.strip()]
    with rados.Rados(conffile=conf) as c, c.open_ioctx('rbd') as io, \
            rbd.Image(io, name, read_only=True) as img:
        lost = [i for i in blocks if img.read(base + i * BLOCK, 64) != pattern(i)[:64]]
    print('%d acknowledged, %d not in RADOS%s' % (len(blocks), len(lost),
          (': blocks ' + ' '.join(map(str, lost[:10]))) if lost else ''))
    return 1 if lost else 0


if __name__ == '__main__':
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == 'write':
        write(args[0], int(args[1]), int(args[2]), args[3])
    elif cmd == 'check':
        sys.exit(check(args[0], args[1], int(args[2]), args[3]))
    else:
        sys.exit('usage: acked_writes.py write DEV BASE COUNT LOG | check CONF IMAGE BASE LOG')
