/*
 * agent.sensors.files._answers -- the warm path of the file guard, in C.
 *
 * PermissionGuard (permission.py) reads its permission events through Answers.next().
 * An event that repeats one already decided -- the same process, with the same
 * effective uid and executable, opening the same version (dev, inode, ctime) of the
 * same file for the same action -- is answered here, without the GIL, and counted.
 * Every other event is handed to Python with the opener's uid and executable and the
 * file's identity already looked up; Python decides it and calls remember() to make
 * that answer the answer for its repeats. take() hands the counts over (they become
 * folded file_access events); take(forget=True) also forgets every answer (the policy
 * changed), and every take() forgets the answers of processes that are gone, so a
 * reused pid never inherits an answer.
 *
 * Shared answers: a decision Python calls "plain" (it depended on nothing of the
 * process but its euid and executable) is also kept without the pid. A process
 * Python has vouched for (remember(..., plain=True): its executable is the file its
 * path names, nothing injected into it) gets such answers for files it never opened:
 * a new process of the same program walking the same tree is answered here, each
 * access still counted under its own pid. The vouch binds the executable's inode, and
 * is checked again (one fstatat) whenever a shared answer is used.
 *
 * Why C: the kernel round trip of a permission event costs ~8.7 us on the machines
 * Baomi is measured on; the same warm path in Python cost ~6 us more (the GIL, object
 * creation, the interpreter), against a target of 30 % above the round trip. In C the
 * extra work is two system calls: fstat of the event fd (the file version: a label
 * change changes ctime) and fstat of the opener's /proc directory (its current euid,
 * and whether it still lives), plus one read of the proc connector per read of the
 * group (did any process exec or get a tracer: see "proc connector" below). Without
 * the connector, a readlink of the opener's exe link at every event (~0.8 us more).
 *
 * Class answers: a labelled file's first open by a vouched process, when Python has
 * decided another file of the same class for the same euid and executable. Python
 * puts every labelled file version it knows (dev, inode, ctime: the label was read and
 * its seal checked for exactly that version) into a class -- the label's level,
 * period and scope, and which of the policy's path patterns match its home: all a
 * decision depends on (agent/sensors/files/classes.py) -- and says which class each
 * plain decision was for. A grep -r, a backup or an indexer over a tree of such files
 * is then answered here after its first file: the answer is copied into the process's
 * own table for that file, with the path the file was opened by (read from the event
 * fd), and its repeats are journaled and counted with that path, so the record names
 * every file as Python would have. Any change of a label changes the file's ctime,
 * which no class holds: that file is asked again.
 *
 * Pre-content events (FAN_PRE_ACCESS, Linux 6.14: a read, write or truncate of a
 * labelled file already open) are answered the same way, keyed as their own kind:
 * Python tells a read through a read-only descriptor from a write and remembers
 * the answer for the process and file. Which descriptors it holds changes only when
 * it opens the file again, so any open of the file by the process drops that answer
 * (forget_access); such answers are never shared between processes.
 *
 * Nothing here decides anything: an answer exists only because Python gave it, for
 * exactly the key it was given for. Every lookup is re-done by the kernel on every
 * event, so a setuid, an exec or a relabel is seen at the next open.
 *
 * The repeat journal (optional, journal_fd): an answer given here is written to a
 * memory-mapped file before it is given, so that a kill -9 of the agent loses no
 * answered access (the page cache outlives the process; no fsync is paid). The file
 * has a header page and two halves; the half of the current generation takes, per
 * answer, its record once (the serialized file_access event Python passed as the
 * token) and then one 24-byte record per repeat (pid, time). take() returns exactly
 * what the current half holds and switches to the other half (the next generation);
 * Python marks a generation done once its counts are in the agent's own journal, and
 * reads back, at the next start, every half whose generation is not done
 * (agent/sensors/files/repeats.py). A repeat that does not fit is handed to Python.
 *
 * Locking: one mutex guards the answer table, the kept /proc handles and the queue of
 * events read but not yet handled. System calls on the hit path run under it (it is
 * uncontended: remember() runs on the reader thread, take() once a second).
 * Python objects (the tokens) are touched only with the GIL held and never under the
 * mutex, so a finalizer can never run into it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <linux/cn_proc.h>
#include <linux/connector.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sys/fanotify.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define READ_EVENTS 256 /* permission events taken by one read() */
#define OPENERS 64      /* processes whose /proc handles stay open (two fds each) */
#define EXE_MAX PATH_MAX
/* A fresh table's slots. It doubles as answers are remembered: a table sized for the
 * limit up front (millions of slots) would cost a TLB miss on every lookup. */
#define INITIAL_SLOTS 256

#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000 /* Linux 6.14; older headers lack it */
#endif

/* The repeat journal's layout (agent/sensors/files/repeats.py reads it). */
#define JOURNAL_MAGIC "BAOMIRJ1"
#define JOURNAL_HEADER 4096 /* bytes before the first half */
enum { RECORD_TEMPLATE = 1, RECORD_REPEAT = 2, RECORD_FILE = 3 };
/* The dev of a class answer's key: no file has it; its inode is the class. */
#define CLASS_DEV UINT64_MAX
#define CLASSES_MAX (1 << 22) /* labelled file versions put in classes, at most */

struct journal_header {
	char magic[8];
	uint64_t half_bytes;
	uint64_t done_gen; /* written by Python: generations up to this are recorded */
	uint64_t gen; /* the generation being written */
	struct {
		uint64_t gen; /* the generation this half holds */
		uint64_t used; /* bytes of records; written after them (the commit) */
	} halves[2];
};

struct template_record {
	uint32_t type; /* RECORD_TEMPLATE */
	uint32_t len; /* bytes of the event that follow, padded to 8 */
};

/* A copy of a class answer: the file it was given for, and where the class answer's
 * template is; its repeats name this record as their template. */
struct file_record {
	uint32_t type; /* RECORD_FILE */
	uint32_t path_len; /* bytes of the path that follow, padded to 8 */
	uint64_t template_at;
	uint64_t dev;
	uint64_t ino;
	int64_t ctime_ns;
};

struct repeat_record {
	uint32_t type; /* RECORD_REPEAT */
	uint32_t pid;
	uint64_t template_at; /* offset of its template record in the half */
	int64_t time_ns;
};

struct journal {
	char *map; /* NULL: no journal */
	size_t map_len;
	uint64_t half_bytes;
	uint64_t gen;
	uint64_t used; /* of the current half */
};

/* An executable's path as part of a key: its bytes and their hash, taken once when the
 * path is read, so that a lookup hashes no string. */
struct exe_key {
	const char *s;
	size_t len;
	uint64_t hash;
};

/* What an answer is for (part of its key). */
enum { KIND_OPEN = 0, KIND_EXEC = 1, KIND_ACCESS = 2 };

/* One event read from the group and not yet handled. */
struct pending {
	int fd;
	int pid;
	uint64_t mask;
};

/* A process whose /proc/<pid> directory and exe link are kept open (O_PATH). Such a
 * handle is bound to the process, not the number: once it is gone, readlink through
 * it fails, also when the number has been reused. */
struct opener {
	int pid; /* 0: free slot */
	int dir_fd;
	int exe_fd;
	int pid_fd; /* a pidfd of the same process (-1: none): alive or not, at one call */
	uint64_t used; /* LRU stamp */
	int plain; /* vouched for by Python: may use shared answers */
	uint64_t exe_dev, exe_ino; /* the executable it was vouched for with */
	/* Its answers hold while this stays: a new handle (a new process with the pid)
	 * or an exec the group or the connector saw gives a new one. */
	uint64_t gen;
	/* Its executable's path as last read, while the connector says it ran no other
	 * program since (owned; NULL: read it again at its next event), and its hash. */
	char *exe;
	size_t exe_len;
	uint64_t exe_hash;
};

/* One remembered answer. The key is everything the decision depended on. Laid out for
 * the hit path: the key in the first cache line, what a hit reads and counts in the
 * second (slots are cache-line aligned, three lines each); the rest is for journaling,
 * take() and the copies' bookkeeping. */
struct answer {
	uint64_t hash; /* 0: free slot */
	int pid;
	int uid;
	int kind; /* KIND_OPEN, KIND_EXEC or KIND_ACCESS */
	uint64_t dev;
	uint64_t ino;
	int64_t ctime_ns;
	char *exe;
	size_t exe_len;
	/* -- the second line */
	uint64_t exe_hash;
	uint64_t gen; /* of its opener when given; 0 in the shared table */
	int allow;
	uint64_t count; /* repeats answered here since the last take() */
	int64_t first_ns;
	int64_t last_ns;
	PyObject *token; /* Python's, handed back by take() */
	/* The token is the shared answer's (this answer was made here from it, without
	 * the GIL, so it holds no reference): the shared table outlives it. So, when
	 * exe_borrowed or path_borrowed, is that string: a new process walking a tree
	 * shares one exe and allocates nothing per file. */
	int borrowed;
	uint8_t exe_borrowed, path_borrowed;
	/* -- the third line */
	/* The key hash of the shared answer whose token this is (its own, when it owns
	 * it): where a copy's repeats find the event they are journaled against. */
	uint64_t holder_hash;
	/* The token's bytes when it is bytes and a journal is kept (the event recorded
	 * for its repeats), valid while the token is held; where it was last written. */
	const char *record;
	uint32_t record_len;
	int event; /* its token is a recorded event (bytes) */
	uint64_t journal_gen;
	uint64_t journal_at;
	/* A copy of a class answer: the path its file was opened by (NUL-terminated, owned
	 * unless path_borrowed); NULL for every other answer. */
	char *path;
	uint32_t path_len;
	uint32_t cls; /* of the class answer it is a copy of (0: none) */
} __attribute__((aligned(64)));

_Static_assert(offsetof(struct answer, exe_hash) == 64 &&
		       offsetof(struct answer, holder_hash) == 128 && sizeof(struct answer) == 192,
	       "struct answer: the key in one cache line, what a hit reads in the next");

/* The class of one labelled file version; a table like the answers'. */
struct file_class {
	uint64_t dev; /* with ino 0: a free slot */
	uint64_t ino;
	int64_t ctime_ns;
	uint32_t cls;
};

struct classes {
	struct file_class *slots;
	size_t capacity; /* a power of two, or 0 */
	size_t used;
};

/* An answer table: open addressing, linear probing, never more than half full. */
struct table {
	struct answer *slots;
	size_t capacity; /* a power of two */
	size_t used;
};

/* What an event's opener and file are, as looked up for it. */
struct lookup {
	int uid; /* -1: the process is gone */
	int err; /* errno of fstat on the event fd, 0 if it worked */
	struct stat st;
	/* Its s is exe_buf, or (lock held) the kept opener's path: own_exe() copies it to
	 * exe_buf before the lock is let go. */
	struct exe_key exe;
	char exe_buf[EXE_MAX];
};

typedef struct {
	PyObject_HEAD
	int fan_fd;
	int own_pid;
	pthread_mutex_t lock;
	struct table own; /* answers per process (pid in the key) */
	struct table shared; /* plain answers, pid 0, for vouched processes; class answers */
	struct classes classes; /* labelled file version -> class */
	size_t limit; /* no table holds more than this many answers */
	struct opener openers[OPENERS];
	int last_opener; /* the index of the opener found last: looked at first */
	uint64_t clock; /* LRU clock of openers */
	struct pending *queue;
	size_t q_head, q_tail, q_cap;
	int closed;
	struct journal journal;
	int cn_fd; /* the proc connector (exec and ptrace of every process); -1: none */
	/* An access answer was stored since the own table was last emptied: until one is,
	 * an open has none to end (forget_access() is skipped, one lookup less). */
	int access_answers;
} Answers;

/* ---------------------------------------------------------------- helpers */

static uint64_t mix(uint64_t h, uint64_t v)
{
	/* FNV-1a over 64-bit words, with a final avalanche in key_hash(). */
	h ^= v;
	return h * 0x100000001b3ULL;
}

static struct exe_key exe_key_of(const char *exe, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)exe[i]) * 0x100000001b3ULL;
	return (struct exe_key){ .s = exe, .len = len, .hash = h };
}

static uint64_t key_hash(int pid, int uid, int kind, uint64_t dev, uint64_t ino,
			 int64_t ctime_ns, uint64_t exe_hash)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	h = mix(h, (uint64_t)(uint32_t)pid | ((uint64_t)(uint32_t)uid << 32));
	h = mix(h, (uint64_t)kind);
	h = mix(h, dev);
	h = mix(h, ino);
	h = mix(h, (uint64_t)ctime_ns);
	h = mix(h, exe_hash);
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h ? h : 1; /* 0 marks a free slot */
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t ctime_ns_of(const struct stat *st)
{
	return (int64_t)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec;
}

/*
 * fstat(2) itself where the architecture has it: glibc's fstat() is fstatat(fd, "",
 * AT_EMPTY_PATH), which copies and looks up the empty name first (~25 ns more, twice
 * per event). On x86_64 glibc's struct stat is the kernel's.
 */
static int stat_fd(int fd, struct stat *st)
{
#if defined(__x86_64__) && defined(SYS_fstat)
	return (int)syscall(SYS_fstat, fd, st);
#else
	return fstat(fd, st);
#endif
}

static void close_opener(struct opener *o)
{
	if (o->pid) {
		close(o->dir_fd);
		close(o->exe_fd);
		if (o->pid_fd >= 0)
			close(o->pid_fd);
	}
	free(o->exe);
	memset(o, 0, sizeof(*o));
}

static struct opener *find_opener(Answers *self, int pid)
{
	if (self->openers[self->last_opener].pid == pid)
		return &self->openers[self->last_opener]; /* a process opens files in runs */
	for (int i = 0; i < OPENERS; i++)
		if (self->openers[i].pid == pid) {
			self->last_opener = i;
			return &self->openers[i];
		}
	return NULL;
}

/* Keep /proc/<pid> open for the next events of pid (lock held); the kept opener. */
static struct opener *keep_opener(Answers *self, int pid)
{
	struct opener *o = find_opener(self, pid);
	if (o)
		return o;
	char path[32];
	/* The pidfd first: when its process still lives after /proc/<pid> was opened, both
	 * are that process's. */
	int pid_fd = (int)syscall(SYS_pidfd_open, pid, 0);
	snprintf(path, sizeof(path), "/proc/%d", pid);
	int dir_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dir_fd < 0) {
		if (pid_fd >= 0)
			close(pid_fd);
		return NULL;
	}
	int exe_fd = openat(dir_fd, "exe", O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (exe_fd < 0) {
		close(dir_fd);
		if (pid_fd >= 0)
			close(pid_fd);
		return NULL;
	}
	if (pid_fd >= 0 && syscall(SYS_pidfd_send_signal, pid_fd, 0, NULL, 0) < 0) {
		close(pid_fd);
		pid_fd = -1;
	}
	struct opener *victim = &self->openers[0];
	for (int i = 0; i < OPENERS; i++) {
		struct opener *c = &self->openers[i];
		if (!c->pid) {
			victim = c;
			break;
		}
		if (c->used < victim->used)
			victim = c;
	}
	close_opener(victim);
	victim->pid = pid;
	victim->dir_fd = dir_fd;
	victim->exe_fd = exe_fd;
	victim->pid_fd = pid_fd;
	victim->used = ++self->clock;
	victim->gen = victim->used;
	return victim;
}

/* ---------------------------------------------------------------- proc connector */

/*
 * Whether a kept process ran another program, or got a tracer, since its executable
 * was last read: the kernel's proc connector tells every exec and ptrace attach of
 * every process (NETLINK_CONNECTOR, CN_IDX_PROC; root). Its message is queued on our
 * socket by the exec'ing (or attaching) task itself, before it returns to user space,
 * so before any open it makes after; reading the socket dry after each read of the
 * group therefore sees every exec and attach that happened before any event read. A
 * kept opener's executable is then read once, not at every event (readlink of its
 * exe link was ~0.8 us of the ~1.7 us this loop added to an open), and a vouch holds
 * until its process execs or is attached to (still_vouched() need not look again).
 * When the socket lost messages (ENOBUFS) every kept opener is dropped: their
 * answers are asked again. Without the connector (no CONFIG_PROC_EVENTS, not root)
 * the exe link is read at every event, as before.
 *
 * Limit: the kernel allocates each message without waiting for memory; when even
 * that fails it drops the message and tells no one. A vouched process that then
 * execs keeps its answers until its next exec, attach or the answers' next
 * forgetting.
 */
#define PROC_EVENT_FILTER_EXEC 0x00000002
#define PROC_EVENT_FILTER_PTRACE 0x00000100
#define CONNECTOR_RCVBUF (4 << 20)
#define CONNECTOR_WAIT_MS 1000

struct listen_message {
	struct nlmsghdr nl;
	struct cn_msg cn;
	uint32_t op; /* PROC_CN_MCAST_LISTEN */
	uint32_t events; /* the filter (Linux 6.6; struct proc_input), when sent */
} __attribute__((packed));

/* The process event a connector message nh carries; NULL when it carries none. */
static const struct proc_event *proc_event_of(const struct nlmsghdr *nh)
{
	const struct cn_msg *cn = NLMSG_DATA(nh);
	if (nh->nlmsg_len < NLMSG_LENGTH(sizeof(*cn) + sizeof(struct proc_event)) ||
	    cn->id.idx != CN_IDX_PROC)
		return NULL;
	return (const struct proc_event *)cn->data;
}

/* Send LISTEN, with the event filter when filter; 0 when sent. */
static int connector_listen(int fd, int filter)
{
	struct listen_message m = { 0 };
	size_t data = filter ? 2 * sizeof(uint32_t) : sizeof(uint32_t);
	m.nl.nlmsg_len = (uint32_t)(NLMSG_HDRLEN + sizeof(struct cn_msg) + data);
	m.nl.nlmsg_type = NLMSG_DONE;
	m.cn.id.idx = CN_IDX_PROC;
	m.cn.id.val = CN_VAL_PROC;
	m.cn.len = (uint16_t)data;
	m.op = PROC_CN_MCAST_LISTEN;
	m.events = PROC_EVENT_FILTER_EXEC | PROC_EVENT_FILTER_PTRACE;
	return send(fd, &m, m.nl.nlmsg_len, 0) < 0 ? -1 : 0;
}

/*
 * Whether the connector on fd reports an exec: one of /bin/true, run here, must come
 * back within CONNECTOR_WAIT_MS. A kernel too old for the filter ignores that LISTEN
 * (and acknowledges nothing when filtered); one that keeps the connector from this
 * namespace sends nothing. Either way nothing may be trusted to it.
 */
static int connector_works(int fd)
{
	static char *const argv[] = { "true", NULL };
	static char *const envp[] = { NULL };
	pid_t child;
	if (posix_spawn(&child, "/bin/true", NULL, NULL, argv, envp) != 0)
		return 0;
	int seen = 0;
	int64_t until = now_ns() + CONNECTOR_WAIT_MS * 1000000LL;
	char buf[8192] __attribute__((aligned(8)));
	struct pollfd p = { .fd = fd, .events = POLLIN };
	while (!seen && now_ns() < until &&
	       poll(&p, 1, (int)((until - now_ns()) / 1000000 + 1)) == 1) {
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0)
			break;
		for (struct nlmsghdr *nh = (struct nlmsghdr *)buf; NLMSG_OK(nh, (size_t)n);
		     nh = NLMSG_NEXT(nh, n)) {
			const struct proc_event *ev = proc_event_of(nh);
			if (ev && ev->what == PROC_EVENT_EXEC &&
			    ev->event_data.exec.process_tgid == child)
				seen = 1;
		}
	}
	while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
		;
	return seen;
}

/* A proc connector socket told of every exec and ptrace attach; -1 when there is
 * none to have. */
static int open_connector(void)
{
	/* Filtered to exec and ptrace (Linux 6.6), else every event of every process. */
	for (int filter = 1; filter >= 0; filter--) {
		int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
		if (fd < 0)
			return -1;
		struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_groups = CN_IDX_PROC };
		int size = CONNECTOR_RCVBUF;
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
		    (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) == 0 ||
		     setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)) == 0) &&
		    connector_listen(fd, filter) == 0 && connector_works(fd))
			return fd;
		close(fd);
	}
	return -1;
}

/* A kept process may run other code than it was looked up with (lock held): its
 * answers and vouch go, and its executable is read again at its next event. */
static void ran_other_code(Answers *self, struct opener *o)
{
	o->gen = ++self->clock;
	o->plain = 0;
	free(o->exe);
	o->exe = NULL;
	o->exe_len = 0;
	o->exe_hash = 0;
}

/* Read the connector dry (lock held): every kept process that exec'd or was attached
 * to since the last time runs other code now. */
static void drain_connector(Answers *self)
{
	char buf[8192] __attribute__((aligned(8)));
	while (self->cn_fd >= 0) {
		ssize_t n = recv(self->cn_fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EINTR)
				continue;
			/* ENOBUFS (messages lost) or worse: any kept process may have exec'd. */
			for (int i = 0; i < OPENERS; i++)
				close_opener(&self->openers[i]);
			if (errno != ENOBUFS) {
				close(self->cn_fd);
				self->cn_fd = -1;
			}
			continue;
		}
		for (struct nlmsghdr *nh = (struct nlmsghdr *)buf; NLMSG_OK(nh, (size_t)n);
		     nh = NLMSG_NEXT(nh, n)) {
			const struct proc_event *ev = proc_event_of(nh);
			int tgid;
			if (!ev)
				continue;
			if (ev->what == PROC_EVENT_EXEC)
				tgid = ev->event_data.exec.process_tgid;
			else if (ev->what == PROC_EVENT_PTRACE)
				tgid = ev->event_data.ptrace.process_tgid;
			else
				continue;
			struct opener *o = find_opener(self, tgid);
			if (o)
				ran_other_code(self, o);
		}
	}
}

/* Whether a kept opener is still its process (lock held): its exe link still reads. */
static int opener_alive(struct opener *o)
{
	char exe[8];
	return readlinkat(o->exe_fd, "", exe, sizeof(exe)) >= 0;
}

/* uid and executable of pid, as the kernel says now (lock held); its kept opener. */
static struct opener *look_up_opener(Answers *self, int pid, struct lookup *lk)
{
	ssize_t n;
	struct stat st;
	struct opener *o = find_opener(self, pid);
	if (o && o->exe && stat_fd(o->dir_fd, &st) == 0 &&
	    (st.st_uid != 0 ||
	     (o->pid_fd >= 0 && syscall(SYS_pidfd_send_signal, o->pid_fd, 0, NULL, 0) == 0))) {
		/* Tracked by the connector, so no other program since its exe link was read;
		 * its /proc directory is root's once the process is gone (the handle is
		 * bound to the process, not the number), else owned by its euid now; a
		 * root-owned one is alive when its pidfd can be signalled. */
		o->used = ++self->clock;
		lk->exe = (struct exe_key){ .s = o->exe, .len = o->exe_len, .hash = o->exe_hash };
		lk->uid = (int)st.st_uid;
		return o;
	}
	if (o) {
		/* readlink first: it fails once the process is gone, which makes the fstat
		 * after it (root-owned for a dead process) trustworthy. */
		n = readlinkat(o->exe_fd, "", lk->exe_buf, EXE_MAX - 1);
		if (n >= 0 && stat_fd(o->dir_fd, &st) == 0) {
			o->used = ++self->clock;
			lk->exe = exe_key_of(lk->exe_buf, (size_t)n);
			lk->uid = (int)st.st_uid;
			if (self->cn_fd >= 0 && !o->exe && (o->exe = malloc((size_t)n + 1))) {
				memcpy(o->exe, lk->exe_buf, (size_t)n);
				o->exe[n] = 0;
				o->exe_len = (size_t)n;
				o->exe_hash = lk->exe.hash;
			}
			return o;
		}
		close_opener(o);
	}
	/* Not kept: by path. The owner of /proc/<pid> itself is the task's euid even when
	 * it is not dumpable (the files inside turn root-owned then). */
	char path[48];
	snprintf(path, sizeof(path), "/proc/%d", pid);
	lk->uid = stat(path, &st) == 0 ? (int)st.st_uid : -1;
	snprintf(path, sizeof(path), "/proc/%d/exe", pid);
	n = readlink(path, lk->exe_buf, EXE_MAX - 1);
	lk->exe = exe_key_of(lk->exe_buf, n > 0 ? (size_t)n : 0);
	return NULL;
}

/* Make lk's executable its own (lock held), before the lock is let go: the kept
 * opener's path it may point to can be freed then. */
static void own_exe(struct lookup *lk)
{
	if (lk->exe.s != lk->exe_buf) {
		memcpy(lk->exe_buf, lk->exe.s, lk->exe.len);
		lk->exe.s = lk->exe_buf;
	}
}

static struct answer *find_slot(struct table *t, uint64_t hash, int pid, int uid, int kind,
				const struct stat *st, const struct exe_key *exe)
{
	size_t mask = t->capacity - 1;
	int64_t ctime_ns = ctime_ns_of(st);
	for (size_t i = hash & mask;; i = (i + 1) & mask) {
		struct answer *a = &t->slots[i];
		if (!a->hash)
			return a;
		if (a->hash == hash && a->pid == pid && a->uid == uid && a->kind == kind &&
		    a->dev == (uint64_t)st->st_dev && a->ino == (uint64_t)st->st_ino &&
		    a->ctime_ns == ctime_ns && a->exe_hash == exe->hash && a->exe_len == exe->len &&
		    (a->exe == exe->s || memcmp(a->exe, exe->s, exe->len) == 0))
			return a;
	}
}

/*
 * n zeroed answer slots, cache-line aligned (struct answer is); NULL when memory is
 * short. From calloc, which leaves fresh pages untouched (aligned_alloc and a memset
 * would make every page of a large, mostly empty table resident); the pointer calloc
 * gave is kept just before the slots, for free_slots().
 */
static struct answer *new_slots(size_t n)
{
	size_t align = _Alignof(struct answer);
	char *raw = calloc(1, n * sizeof(struct answer) + align + sizeof(void *));
	if (!raw)
		return NULL;
	uintptr_t at = ((uintptr_t)raw + sizeof(void *) + align - 1) & ~(uintptr_t)(align - 1);
	((void **)at)[-1] = raw;
	return (struct answer *)at;
}

static void free_slots(struct answer *slots)
{
	if (slots)
		free(((void **)slots)[-1]);
}

/* Double a table (lock held); 0, or -1 when memory is short (the table stays). */
static int grow(struct table *t)
{
	size_t capacity = t->capacity * 2;
	struct answer *slots = new_slots(capacity);
	if (!slots)
		return -1;
	for (size_t i = 0; i < t->capacity; i++) {
		struct answer *a = &t->slots[i];
		if (!a->hash)
			continue;
		size_t j = a->hash & (capacity - 1);
		while (slots[j].hash)
			j = (j + 1) & (capacity - 1);
		slots[j] = *a;
	}
	free_slots(t->slots); /* the entries moved, with their exe strings and tokens */
	t->slots = slots;
	t->capacity = capacity;
	return 0;
}

/*
 * A free slot for a new answer with this key, growing the table first if needed (lock
 * held); NULL when the table is at the limit or memory is short.
 */
static struct answer *room_for(Answers *self, struct table *t, uint64_t hash, int pid,
			       int uid, int kind, const struct stat *st, const struct exe_key *exe)
{
	if (!t->slots || t->used >= self->limit)
		return NULL;
	if ((t->used + 1) * 2 > t->capacity && grow(t) < 0)
		return NULL;
	return find_slot(t, hash, pid, uid, kind, st, exe);
}

/* Free what an answer leaving a table owns of its strings (its token is the caller's). */
static void free_strings(struct answer *a)
{
	if (!a->exe_borrowed)
		free(a->exe);
	if (!a->path_borrowed)
		free(a->path);
}

/* Whether a vouched process still runs the inode it was vouched with (lock held): the
 * same path may name another file after an exec (e.g. in another mount namespace). */
static int still_vouched(struct opener *o)
{
	struct stat xs;
	if (o->exe)
		return 1; /* kept only while the connector tells every exec (ran_other_code) */
	return fstatat(o->dir_fd, "exe", &xs, 0) == 0 && (uint64_t)xs.st_dev == o->exe_dev &&
	       (uint64_t)xs.st_ino == o->exe_ino;
}

/*
 * A copy of the shared answer s in the process's own table for this file (lock held),
 * borrowing its token and executable; path marks a copy of a class answer: s's own
 * (path_borrowed), or one the copy owns from here on (freed on failure). NULL when the
 * table is full or a stale answer holds the key.
 */
static struct answer *adopt(Answers *self, struct opener *o, int kind, const struct lookup *lk,
			    uint64_t own_hash, const struct answer *s, char *path,
			    uint32_t path_len, int path_borrowed, uint32_t cls)
{
	struct answer *a =
		room_for(self, &self->own, own_hash, o->pid, lk->uid, kind, &lk->st, &lk->exe);
	if (!a || a->hash) {
		/* Full, or a stale answer of this process holds the key: Python replaces it
		 * (its token may be owned, and is released only with the GIL). */
		if (!path_borrowed)
			free(path);
		return NULL;
	}
	*a = (struct answer){ .hash = own_hash, .pid = o->pid, .uid = lk->uid, .kind = kind,
			      .dev = (uint64_t)lk->st.st_dev, .ino = (uint64_t)lk->st.st_ino,
			      .ctime_ns = ctime_ns_of(&lk->st), .exe = s->exe,
			      .exe_len = s->exe_len, .exe_hash = s->exe_hash, .exe_borrowed = 1,
			      .allow = s->allow, .token = s->token, .borrowed = 1,
			      .holder_hash = s->holder_hash, .gen = o->gen, .event = s->event,
			      .record = s->record, .record_len = s->record_len, .path = path,
			      .path_len = path_len, .path_borrowed = path && path_borrowed,
			      .cls = cls };
	self->own.used++;
	return a;
}

/*
 * A shared answer for a vouched process's first open of a file (lock held): copied
 * into the process's own table, borrowing the shared token, and returned; NULL when
 * there is none or the process no longer runs the executable it was vouched with.
 */
static struct answer *from_shared(Answers *self, struct opener *o, int kind,
				  const struct lookup *lk, uint64_t own_hash)
{
	if (!o || !o->plain || !self->shared.slots)
		return NULL;
	uint64_t h = key_hash(0, lk->uid, kind, lk->st.st_dev, lk->st.st_ino,
			      ctime_ns_of(&lk->st), lk->exe.hash);
	struct answer *s = find_slot(&self->shared, h, 0, lk->uid, kind, &lk->st, &lk->exe);
	if (!s->hash || !still_vouched(o))
		return NULL;
	/* A shared copy of a class answer: this copy names the same file, by the path it
	 * was first opened by (as any shared answer's record does). */
	return adopt(self, o, kind, lk, own_hash, s, s->path, s->path_len, 1, s->cls);
}

static uint64_t class_hash(uint64_t dev, uint64_t ino, int64_t ctime_ns)
{
	uint64_t h = mix(mix(mix(0xcbf29ce484222325ULL, dev), ino), (uint64_t)ctime_ns);
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

static struct file_class *class_slot(struct classes *c, uint64_t dev, uint64_t ino,
				     int64_t ctime_ns)
{
	size_t mask = c->capacity - 1;
	for (size_t i = class_hash(dev, ino, ctime_ns) & mask;; i = (i + 1) & mask) {
		struct file_class *f = &c->slots[i];
		if (!f->ino || (f->dev == dev && f->ino == ino && f->ctime_ns == ctime_ns))
			return f;
	}
}

/* The class of a file version (lock held); 0: none. */
static uint32_t class_of(struct classes *c, const struct stat *st)
{
	if (!c->used)
		return 0;
	struct file_class *f =
		class_slot(c, (uint64_t)st->st_dev, (uint64_t)st->st_ino, ctime_ns_of(st));
	return f->ino ? f->cls : 0;
}

/*
 * Keep a copy of class answer c for the file of a (lock held), in the shared table: a
 * new process of the same program then finds the file there (from_shared), without
 * reading its path again. Nothing when the table is full.
 */
static void share_copy(Answers *self, const struct lookup *lk, const struct answer *c,
		       const struct answer *a)
{
	uint64_t h = key_hash(0, lk->uid, KIND_OPEN, lk->st.st_dev, lk->st.st_ino,
			      ctime_ns_of(&lk->st), lk->exe.hash);
	char *path = strndup(a->path, a->path_len);
	struct answer *x = path ? room_for(self, &self->shared, h, 0, lk->uid, KIND_OPEN,
					   &lk->st, &lk->exe)
				: NULL;
	if (!x || x->hash) {
		free(path);
		return;
	}
	/* Its exe is the class answer's: both live as long as the shared table. */
	*x = (struct answer){ .hash = h, .uid = lk->uid, .kind = KIND_OPEN,
			      .dev = (uint64_t)lk->st.st_dev, .ino = (uint64_t)lk->st.st_ino,
			      .ctime_ns = ctime_ns_of(&lk->st), .exe = c->exe,
			      .exe_len = c->exe_len, .exe_hash = c->exe_hash, .exe_borrowed = 1,
			      .allow = c->allow, .token = c->token, .borrowed = 1,
			      .holder_hash = c->holder_hash, .event = c->event, .record = c->record,
			      .record_len = c->record_len, .path = path, .path_len = a->path_len,
			      .cls = a->cls };
	self->shared.used++;
}

/*
 * A class answer for a vouched process's first open of a labelled file (lock held):
 * copied into its own table with the path the event fd names, and returned; NULL when
 * the file is in no class, its class was not decided for this euid and executable, or
 * the process no longer runs what it was vouched with.
 */
static struct answer *from_class(Answers *self, struct opener *o, const struct lookup *lk,
				 uint64_t own_hash, int event_fd)
{
	if (!o || !o->plain || !self->shared.slots)
		return NULL;
	uint32_t cls = class_of(&self->classes, &lk->st);
	if (!cls)
		return NULL;
	struct stat key = { 0 };
	key.st_dev = (dev_t)CLASS_DEV;
	key.st_ino = (ino_t)cls;
	uint64_t h = key_hash(0, lk->uid, KIND_OPEN, CLASS_DEV, cls, 0, lk->exe.hash);
	struct answer *s = find_slot(&self->shared, h, 0, lk->uid, KIND_OPEN, &key, &lk->exe);
	if (!s->hash || !s->event || !still_vouched(o))
		return NULL; /* not recorded as an event: Python decides each file */
	char link[32], opened[PATH_MAX];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", event_fd);
	ssize_t n = readlink(link, opened, sizeof(opened));
	/* A path that fills the buffer may be cut short: Python reads it whole. */
	char *path = n > 0 && (size_t)n < sizeof(opened) ? strndup(opened, (size_t)n) : NULL;
	if (!path)
		return NULL;
	struct answer class_answer = *s; /* s moves if the shared table grows below */
	struct answer *a = adopt(self, o, KIND_OPEN, lk, own_hash, s, path, (uint32_t)n, 0, cls);
	if (a)
		share_copy(self, lk, &class_answer, a);
	return a;
}

/* ---------------------------------------------------------------- reads of open files */

/*
 * A pre-content event does not say through which descriptor the process reads or
 * writes. What it holds does: the file open for reading only, and no shared writable
 * mapping of it, and every such event is a read, allowed (the open was decided and
 * recorded). writers.py's may_write() looks, in Python, at the first such event of each
 * process and file: ~90 us, for every file a reader such as cat or grep reads. Here the
 * same look, in C, from the process's kept /proc handle; anything else -- a writable
 * descriptor or mapping, the file held neither way, a process that cannot be looked
 * at -- is left to Python, which decides it as a write.
 */
#define MAX_DESCRIPTORS 4096 /* of a process looked at; more: left to Python (writers.py) */

/* The access mode of descriptor name of the process of dir_fd (its fdinfo's octal
 * flags); -1 when unknown. */
static int fd_access_mode(int dir_fd, const char *name)
{
	char path[64], buf[256];
	snprintf(path, sizeof(path), "fdinfo/%s", name);
	int fd = openat(dir_fd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	const char *at = strstr(buf, "\nflags:");
	char *end;
	if (!at)
		return -1;
	unsigned long flags = strtoul(at + 7, &end, 8);
	return end == at + 7 ? -1 : (int)(flags & O_ACCMODE);
}

/* Whether the process of dir_fd maps the file (dev, ino): 0 no, 1 yes, 2 shared and
 * writable, -1 cannot tell. */
static int maps_file(int dir_fd, uint64_t dev, uint64_t ino)
{
	int fd = openat(dir_fd, "maps", O_RDONLY | O_CLOEXEC);
	FILE *maps = fd >= 0 ? fdopen(fd, "r") : NULL;
	if (!maps) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	char *line = NULL;
	size_t cap = 0;
	int found = 0;
	while (found < 2 && getline(&line, &cap, maps) > 0) {
		/* start-end perms offset major:minor inode [path]; parsed by hand: sscanf()
		 * was a tenth of the loop's time for a reader of many files. */
		char *perms = strchr(line, ' ');
		char *offset = perms ? strchr(perms + 1, ' ') : NULL;
		char *device = offset ? strchr(offset + 1, ' ') : NULL;
		if (!device || offset - perms != 5)
			continue;
		char *end;
		unsigned long major_ = strtoul(device + 1, &end, 16);
		if (*end != ':')
			continue;
		unsigned long minor_ = strtoul(end + 1, &end, 16);
		if (*end != ' ')
			continue;
		unsigned long long inode = strtoull(end + 1, &end, 10);
		if (inode != ino || major_ != major((dev_t)dev) || minor_ != minor((dev_t)dev))
			continue;
		found = perms[2] == 'w' && perms[4] == 's' ? 2 : 1;
	}
	int failed = ferror(maps);
	free(line);
	fclose(maps);
	return failed ? -1 : found;
}

/* Whether the process of dir_fd holds the file (dev, ino) for reading only: open for
 * reading only, and mapped, if at all, not shared and writable (lock held). */
static int holds_for_reading_only(int dir_fd, uint64_t dev, uint64_t ino)
{
	int fds = openat(dir_fd, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fds >= 0 ? fdopendir(fds) : NULL;
	if (!d) {
		if (fds >= 0)
			close(fds);
		return 0;
	}
	int readable = 0, writable = 0, seen = 0;
	struct dirent *e;
	while (!writable && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		struct stat st;
		if (++seen > MAX_DESCRIPTORS) {
			writable = 1; /* too many to look at: Python decides */
			break;
		}
		if (fstatat(fds, e->d_name, &st, 0) < 0 || (uint64_t)st.st_dev != dev ||
		    (uint64_t)st.st_ino != ino)
			continue; /* closed meanwhile, not a file, or another one */
		if (fd_access_mode(dir_fd, e->d_name) == O_RDONLY)
			readable = 1;
		else
			writable = 1;
	}
	closedir(d);
	if (writable)
		return 0;
	int mapped = maps_file(dir_fd, dev, ino);
	return mapped >= 0 && mapped < 2 && (readable || mapped == 1);
}

/*
 * An access answer for a read (lock held): the process of o holds the file of lk for
 * reading only, so the event is allowed, and its next ones too until the process opens
 * the file again (forget_access). No token: not recorded again (the open was). NULL when
 * it holds the file otherwise, or the table is full.
 */
static struct answer *read_only_access(Answers *self, struct opener *o,
				       const struct lookup *lk, uint64_t h,
				       const struct stat *key)
{
	if (!holds_for_reading_only(o->dir_fd, (uint64_t)lk->st.st_dev, (uint64_t)lk->st.st_ino))
		return NULL;
	char *exe = strndup(lk->exe.s, lk->exe.len);
	struct answer *a = exe ? room_for(self, &self->own, h, o->pid, lk->uid, KIND_ACCESS, key,
					  &lk->exe)
			       : NULL;
	if (!a || a->hash) {
		free(exe);
		return NULL;
	}
	*a = (struct answer){ .hash = h, .pid = o->pid, .uid = lk->uid, .kind = KIND_ACCESS,
			      .dev = (uint64_t)key->st_dev, .ino = (uint64_t)key->st_ino,
			      .exe = exe, .exe_len = lk->exe.len, .exe_hash = lk->exe.hash,
			      .allow = 1, .holder_hash = h, .gen = o->gen };
	self->own.used++;
	self->access_answers = 1;
	return a;
}

static int respond(int fan_fd, int fd, int allow)
{
	struct fanotify_response r = { .fd = fd, .response = allow ? FAN_ALLOW : FAN_DENY };
	if (write(fan_fd, &r, sizeof(r)) != sizeof(r) && errno != ENOENT)
		return -errno; /* ENOENT: the event was answered already (the watchdog) */
	return 0;
}

/*
 * Read the group into the queue (lock held on entry and on return; released around the
 * read, which blocks). 0 or -errno.
 */
static uint64_t pad8(uint64_t n)
{
	return (n + 7) & ~(uint64_t)7;
}

static struct journal_header *journal_header(struct journal *j)
{
	return (struct journal_header *)j->map;
}

/*
 * The shared answer a (a copy, lock held) was made from; NULL when it is forgotten or
 * was decided again since. A copy's repeats are journaled against its event, written
 * once per half however many processes and files share it.
 */
static struct answer *original_of(Answers *self, const struct answer *a)
{
	struct stat key = { 0 };
	uint64_t dev = a->dev, ino = a->ino;
	int64_t ctime_ns = a->ctime_ns;
	if (a->cls) {
		dev = CLASS_DEV;
		ino = a->cls;
		ctime_ns = 0;
	}
	key.st_dev = (dev_t)dev;
	key.st_ino = (ino_t)ino;
	key.st_ctim.tv_sec = ctime_ns / 1000000000LL;
	key.st_ctim.tv_nsec = ctime_ns % 1000000000LL;
	struct exe_key exe = { .s = a->exe, .len = a->exe_len, .hash = a->exe_hash };
	struct answer *s = find_slot(&self->shared, a->holder_hash, 0, a->uid, a->kind, &key, &exe);
	return s->hash && s->record == a->record ? s : NULL;
}

/*
 * Write a repeat of a to the journal before it is answered (lock held): its event
 * first if this half lacks it -- for a copy of a shared answer, that answer's event
 * (once per half), and for a copy of a class answer then the file it was copied for
 * (once per half). 0 when it does not fit, or the shared answer is gone (Python
 * decides the event).
 */
static int journal_repeat(Answers *self, struct answer *a, int pid, int64_t t)
{
	struct journal *j = &self->journal;
	if (!j->map || !a->record)
		return 1; /* nothing to keep: no journal, or an answer never recorded */
	char *half = j->map + JOURNAL_HEADER + (j->gen & 1) * j->half_bytes;
	/* The answer whose event the template holds: a itself, or the shared answer. */
	struct answer *holder = a->borrowed ? original_of(self, a) : a;
	if (!holder)
		return 0; /* forgotten, or decided again since: ask Python */
	int with_template = holder->journal_gen != j->gen;
	int with_file = a->cls && a->journal_gen != j->gen;
	uint64_t template_bytes = sizeof(struct template_record) + pad8(holder->record_len);
	uint64_t file_bytes = sizeof(struct file_record) + pad8(a->path_len);
	uint64_t need = sizeof(struct repeat_record) + (with_template ? template_bytes : 0) +
			(with_file ? file_bytes : 0);
	if (need > j->half_bytes - j->used)
		return 0;
	uint64_t at = j->used;
	if (with_template) {
		struct template_record tr = { .type = RECORD_TEMPLATE, .len = holder->record_len };
		memcpy(half + at, &tr, sizeof(tr));
		memcpy(half + at + sizeof(tr), holder->record, holder->record_len);
		holder->journal_gen = j->gen;
		holder->journal_at = at;
		at += template_bytes;
	}
	if (with_file) {
		struct file_record fr = { .type = RECORD_FILE, .path_len = a->path_len,
					  .template_at = holder->journal_at, .dev = a->dev,
					  .ino = a->ino, .ctime_ns = a->ctime_ns };
		memcpy(half + at, &fr, sizeof(fr));
		memcpy(half + at + sizeof(fr), a->path, a->path_len);
		a->journal_gen = j->gen;
		a->journal_at = at;
		at += file_bytes;
	}
	struct repeat_record rr = { .type = RECORD_REPEAT, .pid = (uint32_t)pid,
				    .template_at = a->journal_at, .time_ns = t };
	memcpy(half + at, &rr, sizeof(rr));
	j->used = at + sizeof(rr);
	/* The commit: a reader trusts records up to used only. */
	__atomic_store_n(&journal_header(j)->halves[j->gen & 1].used, j->used, __ATOMIC_RELEASE);
	return 1;
}

/* Start the next generation in the other half (lock held). */
static void journal_flip(struct journal *j)
{
	if (!j->map)
		return;
	struct journal_header *h = journal_header(j);
	/* The half just ended stays in the page cache (and the file) for a read back;
	 * only its pages leave this process's resident set, which would otherwise grow
	 * by both halves for good. */
	madvise(j->map + JOURNAL_HEADER + (j->gen & 1) * j->half_bytes, j->half_bytes,
		MADV_DONTNEED);
	j->gen++;
	j->used = 0;
	/* Emptied before it is named: a half never holds a generation's name with another
	 * generation's records. */
	__atomic_store_n(&h->halves[j->gen & 1].used, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&h->halves[j->gen & 1].gen, j->gen, __ATOMIC_RELEASE);
	__atomic_store_n(&h->gen, j->gen, __ATOMIC_RELEASE);
}

static int refill(Answers *self)
{
	char buf[READ_EVENTS * sizeof(struct fanotify_event_metadata)] __attribute__((aligned(8)));
	int fan_fd = self->fan_fd;
	if (fan_fd < 0)
		return -EBADF;
	pthread_mutex_unlock(&self->lock);
	ssize_t len = read(fan_fd, buf, sizeof(buf));
	int read_errno = errno;
	pthread_mutex_lock(&self->lock);
	if (len < 0)
		return read_errno == EINTR ? 0 : -read_errno;
	if (self->q_head == self->q_tail)
		self->q_head = self->q_tail = 0;
	int bad = 0;
	struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
	for (; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
		if (m->vers != FANOTIFY_METADATA_VERSION) {
			bad = 1; /* every fd read is still queued, to be answered */
			continue;
		}
		if (m->fd < 0)
			continue; /* FAN_NOFD: nothing waits for an answer */
		if (self->q_tail == self->q_cap) {
			size_t cap = self->q_cap * 2;
			struct pending *q = realloc(self->queue, cap * sizeof(*q));
			if (!q) {
				/* Cannot hold it: deny now rather than leave it hanging. */
				respond(fan_fd, m->fd, 0);
				close(m->fd);
				continue;
			}
			self->queue = q;
			self->q_cap = cap;
		}
		self->queue[self->q_tail++] =
			(struct pending){ .fd = m->fd, .pid = m->pid, .mask = m->mask };
	}
	return bad ? -EPROTO : 0;
}

/* What an event asks: an open, an exec, or (pre-content) a read, write or truncate
 * of a file already open. An access answer is keyed without the file's ctime: every
 * write changes it, and the answer is about the descriptors the process holds, which
 * a relabel does not change (as with reads, it holds until the file is opened again
 * or the answers are forgotten). */
static int kind_of(uint64_t mask)
{
	if (mask & FAN_OPEN_EXEC_PERM)
		return KIND_EXEC;
	return (mask & FAN_PRE_ACCESS) ? KIND_ACCESS : KIND_OPEN;
}

/*
 * The process is opening the file again (lock held): the access answer it was given
 * for the files it held open no longer holds -- the new descriptor may be writable.
 * Left in the table with a generation no opener has, so take() still counts it.
 */
static void forget_access(Answers *self, int pid, const struct lookup *lk)
{
	struct stat key = lk->st;
	key.st_ctim = (struct timespec){ 0 };
	uint64_t h = key_hash(pid, lk->uid, KIND_ACCESS, key.st_dev, key.st_ino, 0, lk->exe.hash);
	struct answer *a = find_slot(&self->own, h, pid, lk->uid, KIND_ACCESS, &key, &lk->exe);
	if (a->hash)
		a->gen = 0;
}

/*
 * Answer events until one needs Python; 0 with *ev and *lk filled, or -errno.
 * Runs without the GIL; takes the lock once per event.
 */
static int serve(Answers *self, struct pending *ev, struct lookup *lk, int may_read)
{
	pthread_mutex_lock(&self->lock);
	for (;;) {
		if (self->q_head == self->q_tail) {
			if (!may_read) {
				pthread_mutex_unlock(&self->lock);
				return -EAGAIN;
			}
			int rc = refill(self);
			if (rc < 0) {
				pthread_mutex_unlock(&self->lock);
				return rc;
			}
			drain_connector(self); /* execs before the events just read */
			continue;
		}
		*ev = self->queue[self->q_head++];
		lk->uid = -1;
		lk->err = 0;
		lk->exe = (struct exe_key){ .s = lk->exe_buf };
		if (ev->pid == self->own_pid || stat_fd(ev->fd, &lk->st) < 0) {
			/* The agent's own opens (Python allows them), or a file that cannot be
			 * looked at (Python denies it). */
			lk->err = ev->pid == self->own_pid ? 0 : errno;
			memset(&lk->st, 0, sizeof(lk->st));
			pthread_mutex_unlock(&self->lock);
			return 0;
		}
		int kind = kind_of(ev->mask);
		struct opener *o = look_up_opener(self, ev->pid, lk);
		if (kind == KIND_EXEC && o) {
			/* It is about to run another program (perhaps the same file with other
			 * libraries preloaded): nothing it was answered holds for that one. */
			o->gen = ++self->clock;
			o->plain = 0;
		}
		struct answer *a = NULL;
		if (self->own.slots && lk->uid >= 0) {
			if (kind == KIND_OPEN && o && self->access_answers)
				forget_access(self, ev->pid, lk);
			struct stat key = lk->st;
			if (kind == KIND_ACCESS)
				key.st_ctim = (struct timespec){ 0 }; /* see kind_of() */
			uint64_t h = key_hash(ev->pid, lk->uid, kind, key.st_dev, key.st_ino,
					      ctime_ns_of(&key), lk->exe.hash);
			a = find_slot(&self->own, h, ev->pid, lk->uid, kind, &key, &lk->exe);
			if (!a->hash) {
				/* What a process may do through its open files depends on which
				 * it holds: an access answer is never shared. */
				a = kind == KIND_ACCESS ? NULL : from_shared(self, o, kind, lk, h);
				if (!a && kind == KIND_OPEN)
					a = from_class(self, o, lk, h, ev->fd);
				if (!a && kind == KIND_ACCESS && o)
					a = read_only_access(self, o, lk, h, &key);
			}
			else if (!o || a->gen != o->gen)
				a = NULL; /* given to another process with the pid, or before an exec */
		}
		if (!a) {
			own_exe(lk);
			pthread_mutex_unlock(&self->lock);
			return 0; /* a new question: Python decides */
		}
		int64_t t = now_ns();
		if (!journal_repeat(self, a, ev->pid, t)) {
			own_exe(lk);
			pthread_mutex_unlock(&self->lock);
			return 0; /* the journal's half is full: Python decides and records */
		}
		if (a->count++ == 0)
			a->first_ns = t;
		a->last_ns = t;
		int allow = a->allow, fan_fd = self->fan_fd;
		pthread_mutex_unlock(&self->lock);
		int rc = respond(fan_fd, ev->fd, allow);
		close(ev->fd);
		if (rc < 0)
			return rc;
		pthread_mutex_lock(&self->lock);
	}
}

/* ---------------------------------------------------------------- Python type */

/*
 * Map the repeat journal of journal_fd and start a new generation in it; -1 with a
 * Python error when it is not one, or holds a generation not yet read back.
 */
static int open_journal(struct journal *j, int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		PyErr_SetFromErrno(PyExc_OSError);
		return -1;
	}
	size_t len = (size_t)st.st_size;
	if (len < JOURNAL_HEADER + 2 * 4096) {
		PyErr_Format(PyExc_ValueError, "the repeat journal is too short (%zu bytes)", len);
		return -1;
	}
	char *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		PyErr_SetFromErrno(PyExc_OSError);
		return -1;
	}
	struct journal_header *h = (struct journal_header *)map;
	const char *problem = NULL;
	if (memcmp(h->magic, JOURNAL_MAGIC, sizeof(h->magic)) != 0)
		problem = "it is not a repeat journal";
	else if (h->half_bytes % 8 || JOURNAL_HEADER + 2 * h->half_bytes != len)
		problem = "its halves do not fit its size";
	else if (h->gen > h->done_gen)
		problem = "it holds repeats not yet read back";
	if (problem) {
		munmap(map, len);
		PyErr_Format(PyExc_ValueError, "repeat journal refused: %s", problem);
		return -1;
	}
	*j = (struct journal){ .map = map, .map_len = len, .half_bytes = h->half_bytes,
			       .gen = h->gen };
	journal_flip(j);
	return 0;
}

static void close_journal(struct journal *j)
{
	if (j->map)
		munmap(j->map, j->map_len);
	j->map = NULL;
}

static int Answers_init(Answers *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "fan_fd", "own_pid", "limit", "journal_fd", "track_execs",
				  NULL };
	int fan_fd, own_pid, journal_fd = -1, track_execs = 1;
	Py_ssize_t limit = 65536;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "ii|nip", kwlist, &fan_fd, &own_pid, &limit,
					 &journal_fd, &track_execs))
		return -1;
	if (limit < 1 || limit > (1 << 24)) {
		PyErr_Format(PyExc_ValueError, "limit must be 1..%d answers, not %zd", 1 << 24,
			     limit);
		return -1;
	}
	if (self->queue) {
		PyErr_SetString(PyExc_RuntimeError, "Answers is already initialised");
		return -1;
	}
	if (journal_fd >= 0 && open_journal(&self->journal, journal_fd) < 0)
		return -1;
	self->own.slots = new_slots(INITIAL_SLOTS);
	self->shared.slots = new_slots(INITIAL_SLOTS);
	self->queue = calloc(READ_EVENTS, sizeof(struct pending));
	if (!self->own.slots || !self->shared.slots || !self->queue) {
		free_slots(self->own.slots);
		free_slots(self->shared.slots);
		free(self->queue);
		self->own.slots = self->shared.slots = NULL;
		self->queue = NULL;
		close_journal(&self->journal);
		PyErr_NoMemory();
		return -1;
	}
	self->own.capacity = self->shared.capacity = INITIAL_SLOTS;
	self->limit = (size_t)limit;
	self->q_cap = READ_EVENTS;
	self->fan_fd = fan_fd;
	self->own_pid = own_pid;
	self->cn_fd = track_execs ? open_connector() : -1;
	pthread_mutex_init(&self->lock, NULL);
	return 0;
}

/* Release a table moved out: its own tokens (GIL held, mutex not) and its memory. */
static void drop_table(struct table *t)
{
	if (!t->slots)
		return;
	for (size_t i = 0; i < t->capacity; i++) {
		if (!t->slots[i].borrowed)
			Py_XDECREF(t->slots[i].token);
		free_strings(&t->slots[i]);
	}
	free_slots(t->slots);
	t->slots = NULL;
}

static void Answers_dealloc(Answers *self)
{
	if (self->queue) {
		drop_table(&self->own); /* first: it borrows tokens of the shared table */
		drop_table(&self->shared);
		for (int i = 0; i < OPENERS; i++)
			close_opener(&self->openers[i]);
		free(self->queue);
		free(self->classes.slots);
		close_journal(&self->journal);
		if (self->cn_fd >= 0)
			close(self->cn_fd);
		pthread_mutex_destroy(&self->lock);
	}
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(Answers *self)
{
	if (!self->queue) {
		PyErr_SetString(PyExc_RuntimeError, "Answers.__init__ was not called");
		return 0;
	}
	return 1;
}

PyDoc_STRVAR(next_doc,
"next() -> (fd, pid, mask, uid, exe, dev, ino, ctime_ns, err)\n\n"
"Answer repeats until an event needs a decision, and return it. The GIL is released\n"
"meanwhile. uid is -1 when the opener is gone; err is the errno of fstat on the\n"
"event fd (0: dev, ino and ctime_ns are valid). Events of own_pid come back with\n"
"nothing looked up. The caller must answer and close fd. Raises OSError when the\n"
"group cannot be read or answered.");

static PyObject *next_event(Answers *self, int may_read)
{
	if (!ready(self))
		return NULL;
	struct pending ev;
	struct lookup *lk = PyMem_RawMalloc(sizeof(*lk));
	if (!lk)
		return PyErr_NoMemory();
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = serve(self, &ev, lk, may_read);
	Py_END_ALLOW_THREADS
	if (rc == -EAGAIN && !may_read) {
		PyMem_RawFree(lk);
		Py_RETURN_NONE;
	}
	if (rc < 0) {
		PyMem_RawFree(lk);
		errno = -rc;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	PyObject *exe = PyUnicode_DecodeFSDefaultAndSize(lk->exe.s, (Py_ssize_t)lk->exe.len);
	PyObject *result = NULL;
	if (exe)
		result = Py_BuildValue("(iiKiNKKLi)", ev.fd, ev.pid, (unsigned long long)ev.mask,
				       lk->uid, exe, (unsigned long long)lk->st.st_dev,
				       (unsigned long long)lk->st.st_ino,
				       (long long)ctime_ns_of(&lk->st), lk->err);
	PyMem_RawFree(lk);
	if (!result) {
		/* Never leave the opener hanging: deny, and let the caller see the error. */
		respond(self->fan_fd, ev.fd, 0);
		close(ev.fd);
	}
	return result;
}

static PyObject *Answers_next(Answers *self, PyObject *Py_UNUSED(ignored))
{
	return next_event(self, 1);
}

PyDoc_STRVAR(next_queued_doc,
"next_queued() -> (fd, pid, mask, uid, exe, dev, ino, ctime_ns, err) | None\n\n"
"Like next(), but never reads the group: the next event already read and not yet\n"
"handled (repeats answered meanwhile), or None. stop() hands the group to the\n"
"guardian with nothing read left unanswered.");

static PyObject *Answers_next_queued(Answers *self, PyObject *Py_UNUSED(ignored))
{
	return next_event(self, 0);
}

/* Point the answer at its token's bytes for the journal (GIL held): only bytes are
 * an event to record; any other token (None: a read through a read-only descriptor,
 * recorded at its open) is answered without a journal record. */
static void keep_record(Answers *self, struct answer *a)
{
	a->event = PyBytes_Check(a->token) && PyBytes_GET_SIZE(a->token) > 0 &&
		   PyBytes_GET_SIZE(a->token) <= UINT32_MAX;
	int is_event = self->journal.map && a->event;
	a->record = is_event ? PyBytes_AS_STRING(a->token) : NULL;
	a->record_len = is_event ? (uint32_t)PyBytes_GET_SIZE(a->token) : 0;
	a->journal_gen = 0; /* a new token: its record is written again */
}

/*
 * Store allow for a key in a table (lock held): a new answer owning a reference to
 * token, or the newer answer for a key already there. 1 if stored; *replaced gets a
 * token to release (GIL held, mutex not).
 */
static int store(Answers *self, struct table *t, uint64_t h, int pid, int uid, int kind,
		 const struct stat *st, const struct exe_key *exe, int allow, PyObject *token,
		 uint64_t gen, PyObject **replaced)
{
	struct answer *a = find_slot(t, h, pid, uid, kind, st, exe);
	if (a->hash) {
		a->gen = gen;
		/* Decided again (two readers raced, or a shared answer was used and this
		 * process asked again): the newer answer counts. */
		a->allow = allow;
		if (pid == 0)
			return 1; /* a shared token may be borrowed: it stays until forgotten */
		if (!a->borrowed)
			*replaced = a->token;
		Py_INCREF(token);
		a->token = token;
		a->borrowed = 0;
		a->holder_hash = h;
		if (!a->path_borrowed) /* Python's own answer for the file: not a class copy */
			free(a->path);
		a->path = NULL;
		a->path_len = 0;
		a->path_borrowed = 0;
		a->cls = 0;
		keep_record(self, a);
		return 1;
	}
	char *copy = strndup(exe->s, exe->len);
	if (!copy)
		return 0;
	a = room_for(self, t, h, pid, uid, kind, st, exe);
	if (!a) {
		free(copy);
		return 0;
	}
	Py_INCREF(token);
	if (kind == KIND_ACCESS)
		self->access_answers = 1;
	*a = (struct answer){ .hash = h, .pid = pid, .uid = uid, .kind = kind,
			      .dev = (uint64_t)st->st_dev, .ino = (uint64_t)st->st_ino,
			      .ctime_ns = ctime_ns_of(st), .exe = copy, .exe_len = exe->len,
			      .exe_hash = exe->hash, .allow = allow, .token = token,
			      .holder_hash = h, .gen = gen };
	keep_record(self, a);
	t->used++;
	return 1;
}

/* Vouch for (or withdraw from) a kept opener, binding its executable (lock held). */
static void vouch(struct opener *o, int plain)
{
	struct stat xs;
	o->plain = plain && fstatat(o->dir_fd, "exe", &xs, 0) == 0;
	if (o->plain) {
		o->exe_dev = (uint64_t)xs.st_dev;
		o->exe_ino = (uint64_t)xs.st_ino;
	}
}

PyDoc_STRVAR(remember_doc,
"remember(pid, uid, exe, dev, ino, ctime_ns, kind, allow, token, plain=False, cls=0)\n"
"-> bool\n\n"
"kind: 0 an open, 1 an exec, 2 a pre-content access of an open file.\n"
"Answer allow to the same access again -- same pid, euid, executable, file version\n"
"and action -- without asking Python, and count it against token. plain: the\n"
"decision depended on nothing of the process but its euid and executable, and the\n"
"process is vouched for; the answer is then also given to the first open of the file\n"
"by any vouched process with the same euid and executable. cls (an open, plain): the\n"
"class of the file (set_classes), whose every file is then answered so to such a\n"
"process. False when the table is full (or closed): the next such event is asked\n"
"again.");

static PyObject *Answers_remember(Answers *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "pid", "uid", "exe", "dev", "ino", "ctime_ns", "kind",
				  "allow", "token", "plain", "cls", NULL };
	int pid, uid, kind, allow, plain = 0;
	unsigned int cls = 0;
	PyObject *exe_obj, *token;
	unsigned long long dev, ino;
	long long ctime_ns;
	if (!ready(self))
		return NULL;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiO&KKLipO|pI", kwlist, &pid, &uid,
					 PyUnicode_FSConverter, &exe_obj, &dev, &ino, &ctime_ns,
					 &kind, &allow, &token, &plain, &cls))
		return NULL;
	struct exe_key exe =
		exe_key_of(PyBytes_AS_STRING(exe_obj), (size_t)PyBytes_GET_SIZE(exe_obj));
	if (uid < 0) {
		Py_DECREF(exe_obj); /* a vanished opener: nothing to repeat */
		Py_RETURN_FALSE;
	}

	struct stat st = { 0 };
	st.st_dev = (dev_t)dev;
	st.st_ino = (ino_t)ino;
	if (kind == KIND_ACCESS)
		ctime_ns = 0; /* see kind_of() */
	st.st_ctim.tv_sec = ctime_ns / 1000000000LL;
	st.st_ctim.tv_nsec = ctime_ns % 1000000000LL;

	PyObject *replaced = NULL;
	int stored = 0;
	/* Py_INCREF under the mutex is safe: the GIL is held and no finalizer can run. */
	pthread_mutex_lock(&self->lock);
	/* An answer is kept only with its process's handle: without one it could not be
	 * told from a later process with the pid. */
	struct opener *o = self->closed ? NULL : keep_opener(self, pid);
	/* An exec between Python's look at the process and this keep is on the connector
	 * still (nothing read it since the event): it undoes what is kept here. */
	if (o) {
		uint64_t h = key_hash(pid, uid, kind, dev, ino, ctime_ns, exe.hash);
		stored = store(self, &self->own, h, pid, uid, kind, &st, &exe, allow, token,
			       o->gen, &replaced);
		if (stored && kind != KIND_ACCESS) /* says nothing of the process's program */
			vouch(o, plain);
		if (stored && o->plain && kind != KIND_ACCESS) {
			PyObject *unused = NULL; /* a shared token is never replaced */
			uint64_t h0 = key_hash(0, uid, kind, dev, ino, ctime_ns, exe.hash);
			store(self, &self->shared, h0, 0, uid, kind, &st, &exe, allow, token, 0,
			      &unused);
			if (cls && kind == KIND_OPEN) {
				struct stat ck = { 0 };
				ck.st_dev = (dev_t)CLASS_DEV;
				ck.st_ino = (ino_t)cls;
				uint64_t hc = key_hash(0, uid, kind, CLASS_DEV, cls, 0, exe.hash);
				store(self, &self->shared, hc, 0, uid, kind, &ck, &exe, allow, token,
				      0, &unused);
			}
		}
		drain_connector(self);
	}
	pthread_mutex_unlock(&self->lock);
	Py_DECREF(exe_obj);
	Py_XDECREF(replaced);
	return PyBool_FromLong(stored);
}

/* One counted answer, as take() collects it under the mutex. */
struct row {
	PyObject *token; /* a new reference */
	int pid;
	uint64_t count;
	int64_t first_ns, last_ns;
	/* A class answer's copy: its file (path owned by the row), else path is NULL. */
	uint64_t dev, ino;
	int64_t ctime_ns;
	char *path;
	uint32_t path_len;
};

/*
 * Delete the answer in slot i of a linear-probing table (lock held), moving back the
 * answers after it that would otherwise no longer be found; its exe, path and token
 * are the caller's to release. Slot i holds the next answer to look at afterwards.
 */
static void delete_at(struct table *t, size_t i)
{
	size_t mask = t->capacity - 1;
	for (size_t j = i;;) {
		j = (j + 1) & mask;
		if (!t->slots[j].hash)
			break;
		size_t home = t->slots[j].hash & mask;
		/* An answer whose home lies cyclically in (i, j] stays where it is. */
		if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
			continue;
		t->slots[i] = t->slots[j];
		i = j;
	}
	memset(&t->slots[i], 0, sizeof(t->slots[i]));
	t->used--;
}

/*
 * Collect the counted answers of a table into rows and reset their counts (lock and
 * GIL held); with prune, also delete the answers whose process is no longer kept
 * (gone, or its handle evicted) or has run another program since, whose own tokens go
 * to *dead. In place: a table built afresh every second faulted in (and zeroed) every
 * page of it again as the next answers were stored, on the read loop's thread. -1 when
 * memory is short.
 */
static int collect(Answers *self, struct table *t, int prune, struct row *rows, size_t *n,
		   PyObject **dead, size_t *n_dead)
{
	for (size_t i = 0; i < t->capacity; i++) {
		struct answer *a = &t->slots[i];
		if (!a->hash || !a->count)
			continue;
		if (!a->token) {
			a->count = 0; /* a read answered here: recorded with its open */
			continue;
		}
		char *path = a->path ? malloc(a->path_len + 1) : NULL;
		if (a->path && !path)
			return -1;
		if (path)
			memcpy(path, a->path, a->path_len + 1);
		Py_INCREF(a->token);
		rows[(*n)++] = (struct row){ .token = a->token, .pid = a->pid, .count = a->count,
					     .first_ns = a->first_ns, .last_ns = a->last_ns,
					     .dev = a->dev, .ino = a->ino, .ctime_ns = a->ctime_ns,
					     .path = path, .path_len = a->path_len };
		a->count = 0;
	}
	/* Every count is taken before anything moves: a deletion may move an answer into
	 * a slot already passed (when a cluster wraps around the table's end), which is
	 * then pruned at the next take, never left uncounted. */
	for (size_t i = 0; prune && i < t->capacity;) {
		struct answer *a = &t->slots[i];
		struct opener *o = a->hash ? find_opener(self, a->pid) : NULL;
		if (!a->hash || (o && a->gen == o->gen)) {
			i++;
			continue;
		}
		if (!a->borrowed)
			dead[(*n_dead)++] = a->token;
		free_strings(a);
		delete_at(t, i); /* slot i now holds the next answer, if any: look again */
	}
	return 0;
}

PyDoc_STRVAR(take_doc,
"take(forget=False) -> list[(token, pid, count, first_ns, last_ns, file)]\n\n"
"The repeats answered since the last take(), one row per (process, answer) that was\n"
"used; counts start again from zero. The answers of processes that are gone are\n"
"forgotten; with forget, every answer is (what decisions depend on changed): each\n"
"access after this is asked again. file: (dev, ino, ctime_ns, path as bytes) of the\n"
"file a class answer was given for; None for every other answer.");

static PyObject *Answers_take(Answers *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "forget", NULL };
	int forget = 0;
	if (!ready(self) || !PyArg_ParseTupleAndKeywords(args, kwds, "|p", kwlist, &forget))
		return NULL;
	struct table old_own = { 0 }, old_shared = { 0 };
	struct answer *fresh_own = new_slots(INITIAL_SLOTS);
	struct answer *fresh_shared = new_slots(INITIAL_SLOTS);
	pthread_mutex_lock(&self->lock);
	size_t cap = self->own.used + 1;
	struct row *rows = malloc(cap * sizeof(*rows));
	PyObject **dead = malloc(cap * sizeof(*dead));
	size_t n = 0, n_dead = 0;
	int failed = !fresh_own || !fresh_shared || !rows || !dead;
	if (!failed && !forget && !self->closed)
		for (int i = 0; i < OPENERS; i++)
			if (self->openers[i].pid && !opener_alive(&self->openers[i]))
				close_opener(&self->openers[i]); /* gone: its answers go below */
	if (!failed && self->own.slots &&
	    collect(self, &self->own, !forget && !self->closed, rows, &n, dead, &n_dead) < 0)
		failed = 1;
	if (!failed)
		journal_flip(&self->journal); /* the rows are exactly what the half holds */
	if (!failed && (forget || self->closed)) {
		/* Out with both: the own table first, it borrows the shared table's tokens. */
		old_own = self->own;
		old_shared = self->shared;
		int keep = !self->closed;
		self->own = (struct table){ .slots = keep ? fresh_own : NULL,
					    .capacity = INITIAL_SLOTS };
		self->access_answers = 0;
		self->shared = (struct table){ .slots = keep ? fresh_shared : NULL,
					       .capacity = INITIAL_SLOTS };
		if (keep)
			fresh_own = fresh_shared = NULL;
	}
	pthread_mutex_unlock(&self->lock);
	free_slots(fresh_own);
	free_slots(fresh_shared);
	PyObject *result = failed ? PyErr_NoMemory() : PyList_New((Py_ssize_t)n);
	for (size_t i = 0; i < n; i++) {
		PyObject *file = NULL, *row = NULL;
		if (result)
			file = rows[i].path ? Py_BuildValue("(KKLy#)", (unsigned long long)rows[i].dev,
							    (unsigned long long)rows[i].ino,
							    (long long)rows[i].ctime_ns, rows[i].path,
							    (Py_ssize_t)rows[i].path_len)
					    : Py_NewRef(Py_None);
		free(rows[i].path);
		if (file) /* "N" consumes token and file, also when it fails */
			row = Py_BuildValue("(NiKLLN)", rows[i].token, rows[i].pid,
					    (unsigned long long)rows[i].count,
					    (long long)rows[i].first_ns, (long long)rows[i].last_ns,
					    file);
		else
			Py_DECREF(rows[i].token);
		if (!row) {
			Py_CLEAR(result);
			continue;
		}
		PyList_SET_ITEM(result, (Py_ssize_t)i, row);
	}
	for (size_t i = 0; i < n_dead; i++)
		Py_XDECREF(dead[i]);
	drop_table(&old_own);
	drop_table(&old_shared);
	free(rows);
	free(dead);
	return result;
}

PyDoc_STRVAR(set_classes_doc,
"set_classes(entries, replace=True) -> None\n\n"
"entries: packed native records (u64 dev, u64 ino, i64 ctime_ns, u32 class, u32 0),\n"
"each a labelled file version and its class (1 or more). With replace the classes of\n"
"every other file are forgotten (a new policy gives new classes), else these are\n"
"added. ValueError for a malformed or too large list.");

struct class_entry {
	uint64_t dev;
	uint64_t ino;
	int64_t ctime_ns;
	uint32_t cls;
	uint32_t zero;
};

static PyObject *Answers_set_classes(Answers *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "entries", "replace", NULL };
	Py_buffer buf;
	int replace = 1;
	if (!ready(self) ||
	    !PyArg_ParseTupleAndKeywords(args, kwds, "y*|p", kwlist, &buf, &replace))
		return NULL;
	const struct class_entry *e = buf.buf;
	size_t n = (size_t)buf.len / sizeof(*e);
	if ((size_t)buf.len % sizeof(*e)) {
		PyBuffer_Release(&buf);
		return PyErr_Format(PyExc_ValueError, "entries of %zu bytes each, not %zd bytes",
				    sizeof(*e), buf.len);
	}
	for (size_t i = 0; i < n; i++)
		if (!e[i].cls || !e[i].ino || e[i].zero) {
			PyBuffer_Release(&buf);
			return PyErr_Format(PyExc_ValueError, "entry %zu: no class, no inode or "
					    "padding set", i);
		}
	/* Built outside the mutex, which the read loop takes for every event: only this
	 * function writes the table, and it runs with the GIL held, one call at a time. */
	struct classes old = self->classes, fresh = { 0 };
	size_t need = (replace ? 0 : old.used) + n;
	int too_many = need > CLASSES_MAX;
	if (!too_many && need) {
		fresh.capacity = INITIAL_SLOTS;
		while (fresh.capacity < 2 * need)
			fresh.capacity *= 2;
		fresh.slots = calloc(fresh.capacity, sizeof(struct file_class));
	}
	int failed = too_many || (need && !fresh.slots);
	if (!failed) {
		if (!replace)
			for (size_t i = 0; i < old.capacity; i++)
				if (old.slots[i].ino) {
					*class_slot(&fresh, old.slots[i].dev, old.slots[i].ino,
						    old.slots[i].ctime_ns) = old.slots[i];
					fresh.used++;
				}
		for (size_t i = 0; i < n; i++) {
			struct file_class *f = class_slot(&fresh, e[i].dev, e[i].ino, e[i].ctime_ns);
			fresh.used += !f->ino;
			*f = (struct file_class){ .dev = e[i].dev, .ino = e[i].ino,
						  .ctime_ns = e[i].ctime_ns, .cls = e[i].cls };
		}
		pthread_mutex_lock(&self->lock);
		self->classes = fresh;
		pthread_mutex_unlock(&self->lock);
	}
	PyBuffer_Release(&buf);
	if (failed) {
		free(fresh.slots);
		if (too_many)
			return PyErr_Format(PyExc_ValueError, "more than %d classed files", CLASSES_MAX);
		return PyErr_NoMemory();
	}
	free(old.slots);
	Py_RETURN_NONE;
}

PyDoc_STRVAR(journal_gen_doc,
"journal_gen() -> int\n\n"
"The generation of the repeat journal being written (0 without a journal): the next\n"
"take() returns exactly its repeats and starts the next one.");

static PyObject *Answers_journal_gen(Answers *self, PyObject *Py_UNUSED(ignored))
{
	if (!ready(self))
		return NULL;
	pthread_mutex_lock(&self->lock);
	uint64_t gen = self->journal.map ? self->journal.gen : 0;
	pthread_mutex_unlock(&self->lock);
	return PyLong_FromUnsignedLongLong(gen);
}

PyDoc_STRVAR(close_doc,
"close() -> None\n\n"
"Remember nothing more and close the kept /proc handles and the connector; take()\n"
"still returns the repeats counted so far. A reader still inside next() gets\n"
"OSError(EBADF) at its next read.");

static PyObject *Answers_close(Answers *self, PyObject *Py_UNUSED(ignored))
{
	if (!ready(self))
		return NULL;
	pthread_mutex_lock(&self->lock);
	self->closed = 1;
	self->fan_fd = -1;
	for (int i = 0; i < OPENERS; i++)
		close_opener(&self->openers[i]);
	if (self->cn_fd >= 0)
		close(self->cn_fd);
	self->cn_fd = -1;
	pthread_mutex_unlock(&self->lock);
	Py_RETURN_NONE;
}

PyDoc_STRVAR(tracks_execs_doc,
"tracks_execs() -> bool\n\n"
"Whether the proc connector tells this loop of every exec and ptrace attach (so a\n"
"kept process's executable is not read again at each event).");

static PyObject *Answers_tracks_execs(Answers *self, PyObject *Py_UNUSED(ignored))
{
	if (!ready(self))
		return NULL;
	pthread_mutex_lock(&self->lock);
	int on = self->cn_fd >= 0;
	pthread_mutex_unlock(&self->lock);
	return PyBool_FromLong(on);
}

static Py_ssize_t Answers_len(Answers *self)
{
	if (!ready(self))
		return -1;
	pthread_mutex_lock(&self->lock);
	size_t used = self->own.used;
	pthread_mutex_unlock(&self->lock);
	return (Py_ssize_t)used;
}

static PyMethodDef Answers_methods[] = {
	{ "next", (PyCFunction)Answers_next, METH_NOARGS, next_doc },
	{ "next_queued", (PyCFunction)Answers_next_queued, METH_NOARGS, next_queued_doc },
	{ "remember", (PyCFunction)(void (*)(void))Answers_remember, METH_VARARGS | METH_KEYWORDS,
	  remember_doc },
	{ "take", (PyCFunction)(void (*)(void))Answers_take, METH_VARARGS | METH_KEYWORDS, take_doc },
	{ "close", (PyCFunction)Answers_close, METH_NOARGS, close_doc },
	{ "tracks_execs", (PyCFunction)Answers_tracks_execs, METH_NOARGS, tracks_execs_doc },
	{ "journal_gen", (PyCFunction)Answers_journal_gen, METH_NOARGS, journal_gen_doc },
	{ "set_classes", (PyCFunction)(void (*)(void))Answers_set_classes,
	  METH_VARARGS | METH_KEYWORDS, set_classes_doc },
	{ NULL, NULL, 0, NULL },
};

static PySequenceMethods Answers_as_sequence = {
	.sq_length = (lenfunc)Answers_len,
};

PyDoc_STRVAR(Answers_doc,
"Answers(fan_fd, own_pid, limit=65536, journal_fd=-1, track_execs=True)\n\n"
"The read loop of a fanotify permission group, answering repeats of remembered\n"
"decisions in C (see the module source for the design). len() is the number of\n"
"answers remembered.");

static PyTypeObject AnswersType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "agent.sensors.files._answers.Answers",
	.tp_basicsize = sizeof(Answers),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = Answers_doc,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Answers_init,
	.tp_dealloc = (destructor)Answers_dealloc,
	.tp_methods = Answers_methods,
	.tp_as_sequence = &Answers_as_sequence,
};

PyDoc_STRVAR(respond_doc,
"respond(fan_fd, fd, response, close=True) -> None\n\n"
"Answer the permission event of fd (FAN_ALLOW or FAN_DENY) and close fd, without\n"
"letting go of the GIL: os.write() and os.close() let another thread take it, and\n"
"the reader then waits for it back (up to the switch interval) while the opener's\n"
"next events, which the C loop could answer, wait for the reader. Both calls are\n"
"quick and never block. An event answered already (ENOENT) is no error; fd is\n"
"closed in any case (with close).");

static PyObject *answers_respond(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "fan_fd", "fd", "response", "close", NULL };
	int fan_fd, fd, close_fd = 1;
	unsigned int response;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiI|p", kwlist, &fan_fd, &fd, &response,
					 &close_fd))
		return NULL;
	if (response != FAN_ALLOW && response != FAN_DENY) {
		PyErr_Format(PyExc_ValueError, "response must be FAN_ALLOW or FAN_DENY, not %u",
			     response);
		return NULL;
	}
	int rc = respond(fan_fd, fd, response == FAN_ALLOW);
	if (close_fd)
		close(fd);
	if (rc < 0) {
		errno = -rc;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	Py_RETURN_NONE;
}

static PyMethodDef answers_functions[] = {
	{ "respond", (PyCFunction)(void (*)(void))answers_respond, METH_VARARGS | METH_KEYWORDS,
	  respond_doc },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef answers_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "agent.sensors.files._answers",
	.m_doc = "The warm path of the file guard: repeats of remembered decisions answered in C.",
	.m_size = -1,
	.m_methods = answers_functions,
};

PyMODINIT_FUNC PyInit__answers(void)
{
	if (PyType_Ready(&AnswersType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&answers_module);
	if (!m)
		return NULL;
	Py_INCREF(&AnswersType);
	if (PyModule_AddObject(m, "Answers", (PyObject *)&AnswersType) < 0) {
		Py_DECREF(&AnswersType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
