/*
 * The kernel round-trip floor for bench/fanotify.py: the smallest useful fanotify
 * permission responder. It marks directories with FAN_OPEN_PERM | FAN_EVENT_ON_CHILD,
 * answers FAN_ALLOW to every event and closes the event fd; nothing else.
 *
 * Built with -DAGENT_CHECKS it also makes, before each answer, the look-ups the agent's
 * C loop makes for an access it answers from its table, and nothing else: fstat of the
 * event fd (the file and its version), fstat of the opener's kept /proc directory (its
 * euid now, and that it is still the process it was), and, after each read of the
 * group, a read of the proc connector (did a process exec or get a tracer). It shows
 * what part of the agent's cost over the floor those checks are.
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
#ifdef AGENT_CHECKS
#include <linux/cn_proc.h>
#include <linux/connector.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

/* The proc connector, listening for execs and tracer attaches as the agent does. */
static int open_connector(void)
{
	int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_CONNECTOR);
	struct sockaddr_nl addr = { .nl_family = AF_NETLINK, .nl_groups = CN_IDX_PROC };
	struct {
		struct nlmsghdr nl;
		struct cn_msg cn;
		uint32_t op;
		uint32_t events;
	} __attribute__((packed)) listen = {
		.nl = { .nlmsg_len = sizeof(listen), .nlmsg_type = NLMSG_DONE },
		.cn = { .id = { CN_IDX_PROC, CN_VAL_PROC }, .len = 2 * sizeof(uint32_t) },
		.op = PROC_CN_MCAST_LISTEN,
		.events = 0x00000002 | 0x00000100, /* exec, ptrace */
	};
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    send(fd, &listen, sizeof(listen), 0) < 0) {
		perror("proc connector");
		exit(1);
	}
	return fd;
}

/* The opener's /proc directory, kept open while the same process opens files. */
static int proc_dir(int pid)
{
	static int kept_pid, kept_fd = -1;
	if (pid != kept_pid) {
		char path[32];
		if (kept_fd >= 0)
			close(kept_fd);
		snprintf(path, sizeof(path), "/proc/%d", pid);
		kept_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
		kept_pid = pid;
	}
	return kept_fd;
}
#endif

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
#ifdef AGENT_CHECKS
	int cn = open_connector();
	static char cn_buf[8192] __attribute__((aligned(8)));
#endif
	for (;;) {
		ssize_t len = read(fan, buf, sizeof(buf));
		if (len < 0) {
			if (errno == EINTR)
				continue;
			perror("read");
			return 1;
		}
#ifdef AGENT_CHECKS
		while (recv(cn, cn_buf, sizeof(cn_buf), MSG_DONTWAIT) > 0)
			;
#endif
		struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
		for (; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
			if (m->fd < 0)
				continue;
#ifdef AGENT_CHECKS
			struct stat file, opener; /* looked at; the answer is allow whatever they say */
			(void)syscall(SYS_fstat, m->fd, &file);
			(void)syscall(SYS_fstat, proc_dir(m->pid), &opener);
#endif
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
