# Sourced by the benchmark scripts: CPU time of processes, for the
# "core-seconds per GiB / per 1000 I/Os" beside each figure.

clk=$(getconf CLK_TCK)  # ticks per second

# cpu_ticks PIDS...: utime+stime (ticks) of all their threads; a PID that
# is gone (or none given) counts 0.
cpu_ticks() {
  local t=0 p f
  for p; do
    [ -n "$p" ] || continue
    f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    set -- $f
    t=$((t + ${12} + ${13}))
  done
  echo "$t"
}
