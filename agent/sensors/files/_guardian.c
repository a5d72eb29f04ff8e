/*
 * agent.sensors.files._guardian -- the guardian's answer loop, in C.
 *
 * The guardian (guardian_daemon.py) holds a duplicate of the agent's fanotify
 * permission group. While no agent reads the group, serve() answers it here, without
 * the GIL and without returning to Python until asked to: DENY an open of a file that
 * carries any user.baomi.* attribute (a label, whole or in part), or sits in a
 * directory that does (the agent would give it the directory's label), or cannot be
 * inspected; ALLOW the rest, and journal each answer as one JSON line.
 *
 * deny_pending() answers the events a dead agent read and never answered: the kernel
 * matches a response by the fd number the event was delivered as, so writing FAN_DENY
 * for each of the dead reader's possible numbers denies exactly those (ENOENT for a
 * number with no pending event). It must run before serve() reads anything, or it
 * would deny the guardian's own events by number. It returns the numbers it denied,
 * so that the dead agent's own record of the events it was answering (by fd number,
 * answering.py) tells whose opens they were.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define READ_EVENTS 64          /* permission events taken by one read() */
#define XATTR_LIST_BYTES 65536  /* the largest attribute name list (XATTR_LIST_MAX) */
#define LINE_BYTES (4 * PATH_MAX + 256) /* one journal line, the path escaped */
#define LABEL_PREFIX "user.baomi."

/* What serve() did, handed back to Python. */
struct tally {
	unsigned long long denied, allowed, unrecorded;
};

#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000 /* Linux 6.14; older headers lack it */
#endif

/* The action an event asks, as the agent's records name it: a pre-content event is
 * a read or write of a file already open, told apart only by the agent -- here both
 * are denied for labelled files, and journalled as "access". */
static const char *action_of(uint64_t mask)
{
	if (mask & FAN_OPEN_EXEC_PERM)
		return "execute";
	return (mask & FAN_PRE_ACCESS) ? "access" : "read";
}

static int respond(int fan_fd, int fd, int allow)
{
	struct fanotify_response r = { .fd = fd, .response = allow ? FAN_ALLOW : FAN_DENY };
	if (write(fan_fd, &r, sizeof(r)) != sizeof(r))
		return -errno;
	return 0;
}

/* 1: the attribute name list (n bytes, or -1 and errno) has a user.baomi.* name; 0:
 * none, or no attributes on this file system; -errno: cannot tell. */
static int has_label(ssize_t n, const char *names)
{
	if (n < 0)
		return errno == ENOTSUP ? 0 : -errno;
	for (ssize_t i = 0; i < n;) {
		size_t len = strnlen(names + i, (size_t)(n - i));
		if (strncmp(names + i, LABEL_PREFIX, sizeof(LABEL_PREFIX) - 1) == 0)
			return 1;
		i += (ssize_t)len + 1;
	}
	return 0;
}

/*
 * 1: the file carries a label; 2: it does not, but the directory it is in (at path)
 * does, so the agent would give it that label at its first open (labels.inherit_label);
 * 0: neither; -errno: cannot tell (also when path, as this process sees it, is not the
 * file: an opener in another mount namespace). The directory's attributes are read by
 * name: no open, so no event of our own group.
 */
static int labelled(int fd, const char *path, char *names)
{
	int label = has_label(flistxattr(fd, names, XATTR_LIST_BYTES), names);
	if (label != 0)
		return label;
	struct stat file, named;
	if (path[0] != '/' || fstat(fd, &file) < 0 || lstat(path, &named) < 0)
		return -ESTALE;
	if (file.st_dev != named.st_dev || file.st_ino != named.st_ino)
		return -ESTALE;
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0'; /* a file in / */
	else
		*slash = '\0';
	int parent = has_label(llistxattr(dir, names, XATTR_LIST_BYTES), names);
	return parent == 1 ? 2 : parent;
}

/* Append s to out as the inside of a JSON string; returns the new end. */
static char *json_escape(char *out, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			*out++ = '\\';
			*out++ = (char)c;
		} else if (c < 0x20) {
			out += sprintf(out, "\\u%04x", c);
		} else {
			*out++ = (char)c; /* bytes >= 0x80 as they are: the reader decodes them */
		}
	}
	return out;
}

/* The opener's euid (the owner of /proc/<pid>), -1 if it is gone: looked up before the
 * answer, after which a denied opener may exit at once. */
static int opener_uid(int pid)
{
	struct stat st;
	char dir[32];
	snprintf(dir, sizeof(dir), "/proc/%d", pid);
	return stat(dir, &st) == 0 ? (int)st.st_uid : -1;
}

static void journal(int journal_fd, const struct fanotify_event_metadata *m, int uid, int allow,
		    int label, const char *path, char *line)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	char *p = line;
	p += sprintf(p,
		     "{\"event\": \"open\", \"time\": %lld.%09ld, \"pid\": %d, \"uid\": %d, "
		     "\"action\": \"%s\", \"decision\": \"%s\", \"labelled\": %s, "
		     "\"inherited\": %s, \"path\": \"",
		     (long long)ts.tv_sec, ts.tv_nsec, m->pid, uid,
		     action_of(m->mask), allow ? "allow" : "deny",
		     label > 0 ? "true" : (label == 0 ? "false" : "null"),
		     label == 2 ? "true" : "false");
	p = json_escape(p, path, strlen(path));
	p += sprintf(p, "\"}\n");
	if (write(journal_fd, line, (size_t)(p - line)) < 0) {
		/* The answer was given already; a journal that cannot be written loses the
		 * line, the tally still counts it. */
	}
}

/* Answer one event; the journal line is written when records are left. */
static void answer(int fan_fd, int journal_fd, int own_pid, const struct fanotify_event_metadata *m,
		   char *names, char *line, struct tally *t, unsigned long long *records)
{
	char path[PATH_MAX] = "", link[32];
	if (m->pid != own_pid) {
		snprintf(link, sizeof(link), "/proc/self/fd/%d", m->fd);
		ssize_t n = readlink(link, path, sizeof(path) - 1);
		path[n > 0 ? n : 0] = '\0';
	}
	int label = m->pid == own_pid ? 0 : labelled(m->fd, path, names);
	int allow = label == 0;
	int record = m->pid != own_pid && journal_fd >= 0 && *records;
	int uid = record ? opener_uid(m->pid) : -1;
	respond(fan_fd, m->fd, allow); /* ENOENT: answered already; nothing else to do */
	if (m->pid != own_pid) {
		if (allow)
			t->allowed++;
		else
			t->denied++;
		if (record) {
			(*records)--;
			journal(journal_fd, m, uid, allow, label, path, line);
		} else {
			t->unrecorded++;
		}
	}
	close(m->fd);
}

/*
 * Serve until stop_fd is readable (0) or idle_ms pass with nothing to read (0), or
 * -errno. Events in hand are always answered before returning.
 */
static int serve_loop(int fan_fd, int stop_fd, int journal_fd, int own_pid, int idle_ms,
		      unsigned long long records, struct tally *t)
{
	char buf[READ_EVENTS * sizeof(struct fanotify_event_metadata)] __attribute__((aligned(8)));
	char *names = malloc(XATTR_LIST_BYTES);
	char *line = malloc(LINE_BYTES);
	int rc = 0;
	if (!names || !line) {
		rc = -ENOMEM;
		goto out;
	}
	for (;;) {
		struct pollfd fds[2] = { { .fd = fan_fd, .events = POLLIN },
					 { .fd = stop_fd, .events = POLLIN } };
		int n = poll(fds, stop_fd >= 0 ? 2 : 1, idle_ms);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		if (n == 0)
			break; /* idle: nothing pending */
		if (fds[0].revents & (POLLERR | POLLNVAL)) {
			rc = -EBADF;
			break;
		}
		if (fds[0].revents & POLLIN) {
			ssize_t len = read(fan_fd, buf, sizeof(buf));
			if (len < 0 && errno != EINTR && errno != EAGAIN) {
				rc = -errno;
				break;
			}
			struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
			for (; len > 0 && FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
				if (m->fd < 0)
					continue;
				answer(fan_fd, journal_fd, own_pid, m, names, line, t, &records);
			}
		}
		if (stop_fd >= 0 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR)))
			break;
	}
out:
	free(names);
	free(line);
	return rc;
}

PyDoc_STRVAR(serve_doc,
"serve(fan_fd, stop_fd, journal_fd, own_pid, idle_ms=-1, records=100000)\n"
"    -> (denied, allowed, unrecorded)\n\n"
"Answer the permission group fan_fd until stop_fd is readable (it is not read), or\n"
"until idle_ms pass with no event (-1: never). Labelled (any user.baomi.* attribute)\n"
"or uninspectable files are denied, the rest allowed; own_pid's opens are allowed and\n"
"not counted. The first `records` answers are journalled to journal_fd (-1: none) as\n"
"JSON lines. The GIL is released throughout.");

static PyObject *guardian_serve(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "fan_fd", "stop_fd", "journal_fd", "own_pid", "idle_ms",
				  "records", NULL };
	int fan_fd, stop_fd, journal_fd, own_pid, idle_ms = -1;
	unsigned long long records = 100000;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiii|iK", kwlist, &fan_fd, &stop_fd,
					 &journal_fd, &own_pid, &idle_ms, &records))
		return NULL;
	struct tally t = { 0 };
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = serve_loop(fan_fd, stop_fd, journal_fd, own_pid, idle_ms, records, &t);
	Py_END_ALLOW_THREADS
	if (rc < 0) {
		errno = -rc;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	return Py_BuildValue("(KKK)", t.denied, t.allowed, t.unrecorded);
}

PyDoc_STRVAR(deny_pending_doc,
"deny_pending(fan_fd, fd_limit) -> list[int]\n\n"
"Write FAN_DENY for every fd number 0..fd_limit-1 and return the numbers that matched\n"
"an event still waiting (read by a reader that died before answering), ascending:\n"
"the dead reader's records of what it was answering name those numbers.");

static PyObject *guardian_deny_pending(PyObject *Py_UNUSED(mod), PyObject *args)
{
	int fan_fd, limit;
	if (!PyArg_ParseTuple(args, "ii", &fan_fd, &limit))
		return NULL;
	if (limit < 0)
		limit = 0;
	/* One byte per number, filled without the GIL; a pending event is a blocked
	 * task, so few are set. */
	unsigned char *denied = calloc((size_t)limit + 1, 1);
	if (!denied)
		return PyErr_NoMemory();
	int err = 0;
	Py_BEGIN_ALLOW_THREADS
	for (int fd = 0; fd < limit; fd++) {
		int rc = respond(fan_fd, fd, 0);
		if (rc == 0)
			denied[fd] = 1;
		else if (rc != -ENOENT && rc != -EINVAL) {
			err = -rc;
			break;
		}
	}
	Py_END_ALLOW_THREADS
	if (err) {
		free(denied);
		errno = err;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	PyObject *fds = PyList_New(0);
	for (int fd = 0; fds && fd < limit; fd++) {
		if (!denied[fd])
			continue;
		PyObject *n = PyLong_FromLong(fd);
		if (!n || PyList_Append(fds, n) < 0)
			Py_CLEAR(fds);
		Py_XDECREF(n);
	}
	free(denied);
	return fds;
}

PyDoc_STRVAR(flush_marks_doc, "flush_marks(fan_fd, /)\n--\n\n"
			       "Remove every mark of the group (FAN_MARK_FLUSH): it then sees no event.");

static PyObject *guardian_flush_marks(PyObject *module, PyObject *args)
{
	(void)module;
	int fan_fd;
	if (!PyArg_ParseTuple(args, "i:flush_marks", &fan_fd))
		return NULL;
	if (fanotify_mark(fan_fd, FAN_MARK_FLUSH, 0, AT_FDCWD, NULL) < 0)
		return PyErr_SetFromErrno(PyExc_OSError);
	Py_RETURN_NONE;
}

static PyMethodDef guardian_methods[] = {
	{ "flush_marks", guardian_flush_marks, METH_VARARGS, flush_marks_doc },
	{ "serve", (PyCFunction)(void (*)(void))guardian_serve, METH_VARARGS | METH_KEYWORDS,
	  serve_doc },
	{ "deny_pending", guardian_deny_pending, METH_VARARGS, deny_pending_doc },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef guardian_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "agent.sensors.files._guardian",
	.m_doc = "The guardian's answer loop: labelled files denied while no agent reads.",
	.m_size = -1,
	.m_methods = guardian_methods,
};

PyMODINIT_FUNC PyInit__guardian(void)
{
	return PyModule_Create(&guardian_module);
}
