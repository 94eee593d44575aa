#!/usr/bin/env python3
"""find_in_memory.py PID FILE...: looks for each FILE's bytes in the readable
memory of process PID (/proc/PID/mem; root). A FILE ending in .vk is a
512-bit XTS volume key: each 32-byte half is looked for (an AES key schedule
starts with the key itself). Prints where each was found; exit 1 when any
was, 0 when none."""
import sys, re
pid, *files = sys.argv[1:]
needles = []
for f in files:
    b = open(f, 'rb').read()
    if f.endswith('.vk'):
        needles += [(f + '[0:32]', b[:32]), (f + '[32:64]', b[32:64])]
    else:
        needles.append((f, b))
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
print('\n'.join(found))
sys.exit(1 if found else 0)
