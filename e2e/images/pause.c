/* e2e/images/pause.c — the project's pod sandbox ("pause") program, built static by e2e/images/build.
 *
 * Owned by e2e/images. It holds the pod's namespaces open: it sleeps until SIGTERM or SIGINT (exit 0)
 * and, as PID 1 of a pod that shares its PID namespace, reaps every child that is reparented to it.
 * Nothing else: no files, no network, no arguments except -v (prints the version and exits).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAUSE_VERSION "chat-cluster-pause 0.1.0"

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

static void on_child(int sig) {
  (void)sig;
  int saved = errno;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "-v") == 0) {
    puts(PAUSE_VERSION);
    return 0;
  }
  if (argc != 1) {
    fprintf(stderr, "usage: pause [-v]\n");
    return 2;
  }
  if (getpid() != 1) fprintf(stderr, "pause: warning: not running as PID 1\n");

  struct sigaction stop = {0}, child = {0};
  stop.sa_handler = on_stop;
  sigemptyset(&stop.sa_mask);
  child.sa_handler = on_child;
  sigemptyset(&child.sa_mask);
  child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGTERM, &stop, NULL) || sigaction(SIGINT, &stop, NULL) || sigaction(SIGCHLD, &child, NULL)) {
    perror("pause: sigaction");
    return 1;
  }
  while (!stop_signal) pause(); /* returns after every handled signal */
  fprintf(stderr, "pause: signal %d, exiting\n", (int)stop_signal);
  return 0;
}
