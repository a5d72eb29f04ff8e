/*
 * The kernel round-trip floor for bench/fanotify.py: the smallest useful fanotify
 * permission responder. It marks directories with FAN_OPEN_PERM | FAN_EVENT_ON_CHILD,
 * answers FAN_ALLOW to every event and closes the event fd; nothing else.
 *
 * usage: fanotify_allow DIR [DIR...] SECONDS
 *   prints "ready" on stdout once the marks are in place; exits after SECONDS (alarm) or
 *   when killed. Exiting closes the fanotify fd, which makes the kernel allow anything
 *   still pending, so a dead responder never blocks an opener.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/fanotify.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s DIR [DIR...] SECONDS\n", argv[0]);
		return 2;
	}
	/* Never outlive the benchmark: die with the parent, and after SECONDS at most. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	alarm((unsigned)atoi(argv[argc - 1]));

	int fan = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE,
				O_RDONLY | O_LARGEFILE | O_CLOEXEC);
	if (fan < 0) {
		perror("fanotify_init");
		return 1;
	}
	for (int i = 1; i < argc - 1; i++) {
		if (fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD, AT_FDCWD,
				  argv[i]) < 0) {
			perror(argv[i]);
			return 1;
		}
	}
	printf("ready\n");
	fflush(stdout);

	/* Aligned so the metadata structs can be read in place. */
	static char buf[64 * 1024] __attribute__((aligned(8)));
	for (;;) {
		ssize_t len = read(fan, buf, sizeof(buf));
		if (len < 0) {
			if (errno == EINTR)
				continue;
			perror("read");
			return 1;
		}
		struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
		for (; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
			if (m->fd < 0)
				continue;
			if (m->mask & FAN_OPEN_PERM) {
				struct fanotify_response r = { .fd = m->fd, .response = FAN_ALLOW };
				if (write(fan, &r, sizeof(r)) != sizeof(r)) {
					perror("write");
					return 1;
				}
			}
			close(m->fd);
		}
	}
}
