#!/usr/bin/env python3
"""find_in_memory.py [--gone-within S] PID FILE...: looks for each FILE's bytes
in the readable memory of process PID (/proc/PID/mem; root). With
--gone-within S, looks again every 0.1 s until none is found or S seconds
have passed (a key that is to be wiped shortly). A FILE ending in .vk is a
512-bit XTS volume key: each 32-byte half is looked for (an AES key schedule
starts with the key itself). Prints where each was found; exit 1 when any
was, 0 when none."""
import sys, time
args = sys.argv[1:]
within = 0.0
if args[:1] == ['--gone-within']:
    within, args = float(args[1]), args[2:]
pid, *files = args
needles = []
for f in files:
    b = open(f, 'rb').read()
    if f.endswith('.vk'):
        needles += [(f + '[0:32]', b[:32]), (f + '[32:64]', b[32:64])]
    else:
        needles.append((f, b))


def search():
    found = []
    with open('/proc/%s/maps' % pid) as m, open('/proc/%s/mem' % pid, 'rb', 0) as mem:
        for line in m:
            a, perms = line.split()[:2]
            if 'r' not in perms: continue
            lo, hi = (int(x, 16) for x in a.split('-'))
            if 'vvar' in line or 'vsyscall' in line: continue
            try:
                mem.seek(lo); data = mem.read(hi - lo)
            except OSError:
                continue
            for name, n in needles:
                i = data.find(n)
                if i >= 0: found.append('%s at %x (%s)' % (name, lo + i, line.strip()))
    return found


deadline = time.monotonic() + within
found = search()
while found and time.monotonic() < deadline:
    time.sleep(0.1)
    found = search()
print('\n'.join(found))
sys.exit(1 if found else 0)
