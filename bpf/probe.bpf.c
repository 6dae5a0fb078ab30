//go:build ignore

// The sidekey probe: flag, and in enforce mode stop, opens of files on watched tmpfs
// superblocks by executables that are not allowed readers.
//
// Two attach modes share one policy (maps below) and one decision function:
//   - lsm/file_open: returns -EPERM in enforce mode (needs BPF trampolines);
//   - tracepoints syscalls/sys_exit_open*: resolve the returned fd to its struct file
//     and, in enforce mode, SIGKILL the opener before it returns to user space.
//
// Fast path for every open on the node: a few direct (BTF, CO-RE) loads to reach the
// superblock's device, then one bit test in a bitmap of watched anonymous devices.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* Turns a kernel pointer read with bpf_probe_read_kernel into a BTF pointer whose fields
 * can be loaded directly (cheap PROBE_MEM loads instead of one helper call each). */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

#define EPERM 1
#define SIGKILL 9
#define S_IFMT 00170000
#define S_IFREG 0100000
#define O_PATH 010000000

#define COMP_LEN 64  /* bytes per path component, NUL included */
#define FILE_DEPTH 8 /* components of the file's path below the tmpfs root */
#define EXE_DEPTH 16 /* components of the executable's path below the task's root */
#define MAX_FDS 1048576

enum verdict {
	VERDICT_ALERT = 1,
	VERDICT_DENY = 2,
};

enum attach_mode {
	MODE_TRACEPOINT = 1,
	MODE_LSM = 2,
	MODE_SCAN = 3, /* the iter/task_file scan of files already open */
};

enum counter {
	COUNTER_WATCHED = 0,      /* opens of regular files on a watched device */
	COUNTER_ALLOWED = 1,      /* ... by an allowed executable */
	COUNTER_FLAGGED = 2,      /* ... by anyone else */
	COUNTER_DENIED = 3,       /* flagged opens stopped (enforce) */
	COUNTER_RATE_LIMITED = 4, /* flagged opens whose event was suppressed */
	COUNTER_DROPPED = 5,      /* flagged opens whose event found the ring buffer full */
	COUNTER_MAX = 6,
};

#define WATCH_ENFORCE 1

/* Per watched tmpfs superblock. */
struct watch {
	__u32 flags; /* WATCH_ENFORCE */
	__u32 id;    /* user space's handle for the watch (pod, --watch dir) */
};

/* An allowed reader of one watched device: the executable's (device, inode), optionally
 * narrowed to one cgroup (cgroup_id 0 matches every cgroup). */
struct allow_key {
	__u64 exe_ino;
	__u64 cgroup_id;
	__u32 exe_dev;
	__u32 watch_dev;
};

/* Rate limiting per (reader, file). */
struct rl_key {
	__u64 exe_ino;
	__u64 file_ino;
	__u64 cgroup_id;
	__u32 exe_dev;
	__u32 file_dev;
	__u32 uid;
	__u32 pad;
};

struct rl_val {
	__u64 last_ns;
	__u64 suppressed;
};

struct event {
	__u64 boot_ns;
	__u64 cgroup_id;
	__u64 file_ino;
	__u64 exe_ino;
	__u64 suppressed; /* events for this (reader, file) suppressed since the last one */
	__u32 pid;        /* thread group id */
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u32 file_dev;
	__u32 exe_dev;
	__u32 watch_id;
	__u32 open_flags;
	__u8 verdict;
	__u8 mode;
	__u8 file_depth; /* components filled in file[], leaf first */
	__u8 exe_depth;  /* components filled in exe[], leaf first */
	__u8 truncated;  /* bit 0: file path cut (too deep or a name too long), bit 1: exe path cut */
	__u8 pad[3];
	char comm[16];
	char file[FILE_DEPTH][COMP_LEN];
	char exe[EXE_DEPTH][COMP_LEN];
};

/* Force BTF for bpf2go -type. */
const struct event *unused_event __attribute__((unused));
const struct allow_key *unused_allow_key __attribute__((unused));
const struct watch *unused_watch __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* kernel dev_t of the tmpfs superblock */
	__type(value, struct watch);
} watched SEC(".maps");

/* A pre-filter in front of `watched`: one bit per minor number of major 0, the anonymous
 * devices every tmpfs gets. A clear bit ends the fast path with one array load (inlined
 * by the verifier) instead of a hash lookup. */
#define MINOR_BITS 20
struct minor_bitmap {
	__u64 bits[(1 << MINOR_BITS) / 64];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct minor_bitmap);
} watched_minors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct allow_key);
	__type(value, __u8);
} allowed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rl_key);
	__type(value, struct rl_val);
} ratelimit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* One event per (reader, file) per interval; 0 disables rate limiting. Set at load. */
volatile const __u64 rate_interval_ns = 5000000000ULL;

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &c);
	if (v)
		*v += 1;
}

/* Scratch space to build one event (too big for the BPF stack) before copying it into
 * the ring buffer with bpf_ringbuf_output. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} scratch SEC(".maps");

static __always_inline struct event *scratch_event(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch, &zero);
}

/* Path walks run in bpf_loop callbacks: verified once, not once per iteration. */
struct walk {
	struct dentry *d;
	struct vfsmount *mnt;
	struct dentry *root_d;
	struct vfsmount *root_mnt;
	__u32 n;
	__u32 done;
};

/* One step of the file walk: the dentry names from the file up to the root of its
 * superblock, leaf first. Crossing no mount keeps the path as seen from the tmpfs root,
 * whichever bind mount, subPath, hard link or /proc/<pid>/root path the opener used. */
static long file_step(__u32 i, void *ctx)
{
	struct walk *w = ctx;
	struct dentry *d = w->d; /* locals: BPF_CORE_READ must not relocate struct walk */
	struct event *e = scratch_event();
	if (!e)
		return 1;
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	if (!parent || parent == d) {
		w->done = 1;
		return 1;
	}
	if (w->n >= FILE_DEPTH)
		return 1;
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	if (bpf_probe_read_kernel_str(e->file[w->n & (FILE_DEPTH - 1)], COMP_LEN, name) == COMP_LEN)
		e->truncated |= 1; /* a long name: possibly cut */
	w->n++;
	w->d = parent;
	return 0;
}

/* One step of the executable walk: its path as the task sees it (relative to its root,
 * e.g. inside its container), crossing mounts like d_path(). */
static long exe_step(__u32 i, void *ctx)
{
	struct walk *w = ctx;
	struct dentry *d = w->d;
	struct vfsmount *mnt = w->mnt;
	struct event *e = scratch_event();
	if (!e)
		return 1;
	if (d == w->root_d && mnt == w->root_mnt) {
		w->done = 1;
		return 1;
	}
	struct dentry *mnt_root = BPF_CORE_READ(mnt, mnt_root);
	if (d == mnt_root) {
		struct mount *m = (void *)mnt - bpf_core_field_offset(struct mount, mnt);
		struct mount *parent = BPF_CORE_READ(m, mnt_parent);
		if (!parent || parent == m) {
			w->done = 1;
			return 1;
		}
		w->d = BPF_CORE_READ(m, mnt_mountpoint);
		w->mnt = (void *)parent + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	if (!parent || parent == d) {
		w->done = 1;
		return 1;
	}
	if (w->n >= EXE_DEPTH)
		return 1;
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	if (bpf_probe_read_kernel_str(e->exe[w->n & (EXE_DEPTH - 1)], COMP_LEN, name) == COMP_LEN)
		e->truncated |= 2;
	w->n++;
	w->d = parent;
	return 0;
}

/* Who opened: filled only once an open is flagged (the current task's ids come from
 * helpers; a scan reads them from the task it visits). */
struct who {
	__u64 pid_tgid;
	__u64 uid_gid;
	__u64 cgroup_id;
};

static __always_inline void current_who(struct who *w)
{
	w->pid_tgid = bpf_get_current_pid_tgid();
	w->uid_gid = bpf_get_current_uid_gid();
	w->cgroup_id = bpf_get_current_cgroup_id();
}

/* decide applies the policy to an open of file by task (the current task, or in a scan
 * the task visited, whose ids the caller put in who) and reports it. It returns
 * VERDICT_DENY when the open must be stopped (never in a scan), VERDICT_ALERT when it was
 * flagged, 0 otherwise. Up to the allowed-reader check it uses direct (BTF) loads only. */
static __always_inline int decide(struct file *file, struct task_struct *task, __u8 mode, struct who *who)
{
	/* Fast path, run for every open on the node: direct loads, one lookup. */
	struct inode *inode = file->f_inode;
	if (!inode)
		return 0;
	__u32 dev = inode->i_sb->s_dev;
	if (dev >> MINOR_BITS)
		return 0; /* not an anonymous device: not a tmpfs */
	__u32 zero = 0;
	struct minor_bitmap *bm = bpf_map_lookup_elem(&watched_minors, &zero);
	if (!bm)
		return 0;
	if (!(bm->bits[(dev >> 6) & ((1 << MINOR_BITS) / 64 - 1)] & (1ULL << (dev & 63))))
		return 0;
	struct watch *w = bpf_map_lookup_elem(&watched, &dev);
	if (!w)
		return 0;

	/* Slow path: an open on a watched tmpfs. */
	umode_t imode = inode->i_mode;
	if ((imode & S_IFMT) != S_IFREG)
		return 0;
	__u32 fflags = file->f_flags;
	if (fflags & O_PATH)
		return 0;
	count(COUNTER_WATCHED);

	struct file *exe = NULL;
	struct mm_struct *mm = task->mm;
	if (mm)
		exe = mm->exe_file;
	struct allow_key ak = {};
	ak.watch_dev = dev;
	if (exe) {
		struct inode *xi = exe->f_inode;
		ak.exe_dev = xi->i_sb->s_dev;
		ak.exe_ino = xi->i_ino;
		if (bpf_map_lookup_elem(&allowed, &ak)) {
			count(COUNTER_ALLOWED);
			return 0;
		}
	}
	if (mode != MODE_SCAN)
		current_who(who);
	__u64 cgid = who->cgroup_id;
	if (exe) {
		ak.cgroup_id = cgid;
		if (bpf_map_lookup_elem(&allowed, &ak)) {
			count(COUNTER_ALLOWED);
			return 0;
		}
	}

	count(COUNTER_FLAGGED);
	int verdict = VERDICT_ALERT;
	if ((w->flags & WATCH_ENFORCE) && mode != MODE_SCAN) {
		verdict = VERDICT_DENY;
		count(COUNTER_DENIED);
	}
	__u32 watch_id = w->id;

	__u64 now = bpf_ktime_get_boot_ns();
	__u64 uid_gid = who->uid_gid;
	__u64 file_ino = BPF_CORE_READ(inode, i_ino);
	__u64 suppressed = 0;
	if (rate_interval_ns) {
		struct rl_key rk = {};
		rk.exe_ino = ak.exe_ino;
		rk.exe_dev = ak.exe_dev;
		rk.file_ino = file_ino;
		rk.file_dev = dev;
		rk.cgroup_id = cgid;
		rk.uid = (__u32)uid_gid;
		struct rl_val *rv = bpf_map_lookup_elem(&ratelimit, &rk);
		if (rv) {
			if (now - rv->last_ns < rate_interval_ns) {
				__sync_fetch_and_add(&rv->suppressed, 1);
				count(COUNTER_RATE_LIMITED);
				return verdict;
			}
			suppressed = rv->suppressed;
			if (suppressed)
				__sync_fetch_and_sub(&rv->suppressed, suppressed);
			rv->last_ns = now;
		} else {
			struct rl_val nv = {.last_ns = now};
			bpf_map_update_elem(&ratelimit, &rk, &nv, BPF_ANY);
		}
	}

	struct event *e = scratch_event();
	if (!e)
		return verdict;
	__u64 id = who->pid_tgid;
	e->boot_ns = now;
	e->cgroup_id = cgid;
	e->file_ino = file_ino;
	e->exe_ino = ak.exe_ino;
	e->suppressed = suppressed;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->file_dev = dev;
	e->exe_dev = ak.exe_dev;
	e->watch_id = watch_id;
	e->open_flags = fflags;
	e->verdict = verdict;
	e->mode = mode;
	e->file_depth = 0;
	e->exe_depth = 0;
	e->truncated = 0;
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	struct walk f = {.d = BPF_CORE_READ(file, f_path.dentry)};
	bpf_loop(FILE_DEPTH + 1, file_step, &f, 0);
	e->file_depth = f.n;
	if (!f.done)
		e->truncated |= 1;
	if (exe) {
		struct walk x = {
			.d = BPF_CORE_READ(exe, f_path.dentry),
			.mnt = BPF_CORE_READ(exe, f_path.mnt),
			.root_d = BPF_CORE_READ(task, fs, root.dentry),
			.root_mnt = BPF_CORE_READ(task, fs, root.mnt),
		};
		bpf_loop(EXE_DEPTH + 8, exe_step, &x, 0);
		e->exe_depth = x.n;
		if (!x.done)
			e->truncated |= 2;
	}
	if (bpf_ringbuf_output(&events, e, sizeof(*e), 0) != 0)
		count(COUNTER_DROPPED);
	return verdict;
}

/* check_fd applies the policy to the file a new fd of the current task names. */
static __always_inline int check_fd(long fd)
{
	if (fd < 0 || fd >= MAX_FDS)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	if (!fdt)
		return 0;
	if ((unsigned long)fd >= fdt->max_fds)
		return 0;
	struct file **fds = fdt->fd;
	struct file *file = NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) < 0 || !file)
		return 0;
	file = bpf_rdonly_cast(file, bpf_core_type_id_kernel(struct file));
	struct who who = {};
	return decide(file, task, MODE_TRACEPOINT, &who);
}

/* Attached to syscalls/sys_exit_{openat,openat2,open,creat,open_by_handle_at}. */
SEC("tracepoint/syscalls/sys_exit_openat")
int tp_sys_exit_open(struct trace_event_raw_sys_exit *ctx)
{
	if (check_fd(ctx->ret) == VERDICT_DENY)
		bpf_send_signal(SIGKILL);
	return 0;
}

#define IORING_OP_OPENAT_ 18  /* UAPI values */
#define IORING_OP_OPENAT2_ 28

/* io_uring opens are not syscalls: catch their completion. The CQE is posted from the
 * submitting task or one of its io-wq/sqpoll threads, which share its fd table. */
SEC("tp_btf/io_uring_complete")
int BPF_PROG(tp_io_uring_complete, struct io_ring_ctx *ring, void *req, struct io_uring_cqe *cqe)
{
	if (!req || !cqe)
		return 0;
	struct io_kiocb *r = bpf_rdonly_cast(req, bpf_core_type_id_kernel(struct io_kiocb));
	__u8 op = r->opcode;
	if (op != IORING_OP_OPENAT_ && op != IORING_OP_OPENAT2_)
		return 0;
	if (check_fd(cqe->res) == VERDICT_DENY)
		bpf_send_signal(SIGKILL);
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(lsm_file_open, struct file *file, int ret)
{
	if (ret != 0)
		return ret;
	struct who who = {};
	if (decide(file, bpf_get_current_task_btf(), MODE_LSM, &who) == VERDICT_DENY)
		return -EPERM;
	return 0;
}

/* Reports files on watched tmpfs that are already open: opened before the probe or the
 * watch started, inherited, or passed over a unix socket. Run on demand from user space
 * (an iterator); alerts only, never kills. */
SEC("iter/task_file")
int scan_open_files(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	if (!task || !file)
		return 0;
	struct who who = {};
	__u32 tgid = BPF_CORE_READ(task, tgid);
	__u32 pid = BPF_CORE_READ(task, pid);
	who.pid_tgid = (__u64)tgid << 32 | pid;
	__u32 uid = BPF_CORE_READ(task, cred, uid.val);
	__u32 gid = BPF_CORE_READ(task, cred, gid.val);
	who.uid_gid = (__u64)gid << 32 | uid;
	who.cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	decide(file, task, MODE_SCAN, &who);
	return 0;
}
