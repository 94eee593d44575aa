// LD_PRELOAD probe: widens the moment between rbdgw-fuse's fuse_mount and
// its fuse_set_signal_handlers (normally microseconds) so that a test can
// send a stop signal there. It creates $RBDGW_PROBE_MARK, sleeps
// $RBDGW_PROBE_DELAY_MS (default 2000) and calls libfuse's function.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

struct fuse_session;

int fuse_set_signal_handlers(struct fuse_session* se) {
  int (*real)(struct fuse_session*) =
      (int (*)(struct fuse_session*))dlsym(RTLD_NEXT, "fuse_set_signal_handlers");
  if (!real) return -1;
  const char* mark = getenv("RBDGW_PROBE_MARK");
  const char* d = getenv("RBDGW_PROBE_DELAY_MS");
  const long ms = d ? atol(d) : 2000;
  if (mark) {
    const int fd = open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
  }
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
  return real(se);
}
