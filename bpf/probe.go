// Package bpf loads and attaches the sidekey probe: an eBPF program that flags, and in
// enforce mode stops, opens of files on watched tmpfs superblocks by executables that are
// not allowed readers. The policy lives in BPF maps this package edits (Watch, Allow); the
// events arrive through a ring buffer (Read); the counters are per-CPU (Counters).
//
// The C source is probe.bpf.c; probe_bpfel.go/.o are generated from it by bpf2go
// (go generate) and committed.
package bpf

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Mode is how the probe attaches to the kernel.
type Mode string

// Attach modes. ModeAuto tries ModeLSM and falls back to ModeTracepoint.
const (
	ModeAuto       Mode = "auto"
	ModeLSM        Mode = "lsm"
	ModeTracepoint Mode = "tracepoint"
	// ModeScan marks events of ScanOpenFiles: files found already open.
	ModeScan Mode = "scan"
)

// ParseMode parses --attach.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeLSM, ModeTracepoint:
		return m, nil
	case "":
		return ModeAuto, nil
	}
	return "", fmt.Errorf("attach mode %q: want auto, lsm or tracepoint", s)
}

// openTracepoints are the syscall exits whose return value is a new fd naming an opened
// file. Tracepoints missing on an architecture (open, creat on arm64) are skipped.
var openTracepoints = []string{
	"sys_exit_openat", "sys_exit_openat2", "sys_exit_open", "sys_exit_creat", "sys_exit_open_by_handle_at",
}

// OpenTracepoints lists the syscalls/* tracepoints the tracepoint mode attaches to.
func OpenTracepoints() []string { return slices.Clone(openTracepoints) }

// Options configure Load.
type Options struct {
	Mode Mode
	// RateInterval is the minimum time between two events for one (reader, file);
	// opens in between are counted as rate-limited and reported as Suppressed on the next
	// event. Zero disables rate limiting.
	RateInterval time.Duration
	// RingBufferBytes sizes the event ring buffer (a power of two, at least a page).
	// Zero keeps the compiled-in 4 MiB.
	RingBufferBytes uint32
	Logger          *slog.Logger
}

// DefaultRateInterval is the rate-limit window used when Options come from the CLI.
const DefaultRateInterval = 5 * time.Second

// ErrLSMRefused reports that the kernel refused the BPF-LSM program.
var ErrLSMRefused = errors.New("kernel refused the BPF LSM program")

// Probe is a loaded and attached probe.
type Probe struct {
	objs   probeObjects
	links  []link.Link
	reader *ringbuf.Reader
	rec    ringbuf.Record // reused by Read
	mode   Mode
	log    *slog.Logger
	// bootToWall converts bpf_ktime_get_boot_ns to wall time.
	bootToWall time.Duration

	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex
	allowed map[uint32]map[AllowKey]struct{} // watch dev -> keys, to unwatch cleanly
}

// Load loads the probe into the kernel and attaches it in the requested mode. It removes
// the memlock rlimit and mounts tracefs when the tracepoint mode needs it.
func Load(opts Options) (*Probe, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Mode == "" {
		opts.Mode = ModeAuto
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}
	p := &Probe{log: log, allowed: map[uint32]map[AllowKey]struct{}{}}
	p.bootToWall = bootOffset()

	var err error
	switch opts.Mode {
	case ModeLSM:
		err = p.load(opts, ModeLSM)
	case ModeTracepoint:
		err = p.load(opts, ModeTracepoint)
	case ModeAuto:
		err = p.load(opts, ModeLSM)
		if errors.Is(err, ErrLSMRefused) {
			log.Warn("BPF LSM unavailable, falling back to syscall tracepoints (enforce kills the opener instead of failing the open)", "err", err)
			err = p.load(opts, ModeTracepoint)
		}
	default:
		err = fmt.Errorf("attach mode %q: want auto, lsm or tracepoint", opts.Mode)
	}
	if err != nil {
		p.Close()
		return nil, err
	}
	rd, err := ringbuf.NewReader(p.objs.Events)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("open event ring buffer: %w", err)
	}
	p.reader = rd
	return p, nil
}

// lsmObjects and tpObjects load only the program of one mode (plus every map).
type lsmObjects struct {
	probeMaps
	Prog *ebpf.Program `ebpf:"lsm_file_open"`
}

type tpObjects struct {
	probeMaps
	Prog *ebpf.Program `ebpf:"tp_sys_exit_open"`
}

func (p *Probe) load(opts Options, mode Mode) error {
	p.closeObjects()
	spec, err := loadProbe()
	if err != nil {
		return fmt.Errorf("load probe spec: %w", err)
	}
	if err := spec.Variables[probeVarRateIntervalNs].Set(uint64(opts.RateInterval)); err != nil {
		return fmt.Errorf("set rate interval: %w", err)
	}
	if opts.RingBufferBytes != 0 {
		spec.Maps[probeMapEvents].MaxEntries = opts.RingBufferBytes
	}
	switch mode {
	case ModeLSM:
		var o lsmObjects
		if err := spec.LoadAndAssign(&o, nil); err != nil {
			if errors.Is(err, unix.EPERM) {
				// cilium/ebpf's hint about MEMLOCK does not apply: the limit is removed above.
				return fmt.Errorf("%w: loading lsm/file_open: %w (is bpf in the kernel's lsm= list, and are BPF trampolines allowed?)", ErrLSMRefused, unix.EPERM)
			}
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				return fmt.Errorf("%w: %w", ErrLSMRefused, err)
			}
			return fmt.Errorf("load lsm program: %w", err)
		}
		p.objs.probeMaps = o.probeMaps
		p.objs.LsmFileOpen = o.Prog
		l, err := link.AttachLSM(link.LSMOptions{Program: o.Prog})
		if err != nil {
			return fmt.Errorf("%w: attach lsm/file_open: %w", ErrLSMRefused, err)
		}
		p.links = append(p.links, l)
	case ModeTracepoint:
		if err := ensureTracefs(); err != nil {
			return err
		}
		var o tpObjects
		if err := spec.LoadAndAssign(&o, nil); err != nil {
			return fmt.Errorf("load tracepoint program: %w", err)
		}
		p.objs.probeMaps = o.probeMaps
		p.objs.TpSysExitOpen = o.Prog
		for _, name := range openTracepoints {
			l, err := link.Tracepoint("syscalls", name, o.Prog, nil)
			if errors.Is(err, os.ErrNotExist) {
				p.log.Debug("tracepoint missing on this kernel", "tracepoint", "syscalls/"+name)
				continue
			}
			if err != nil {
				return fmt.Errorf("attach tracepoint syscalls/%s: %w", name, err)
			}
			p.links = append(p.links, l)
		}
		if len(p.links) == 0 {
			return errors.New("attach tracepoints: no syscalls/sys_exit_open* tracepoint exists")
		}
		p.loadIOUring(spec, o.probeMaps)
	}
	p.objs.ScanOpenFiles = p.loadExtra(spec, p.objs.probeMaps, probeProgScanOpenFiles, "files opened before a watch")
	p.mode = mode
	return nil
}

// loadExtra loads one more program sharing the maps. Extras are optional: a kernel that
// refuses one only lacks that coverage, which is logged.
func (p *Probe) loadExtra(spec *ebpf.CollectionSpec, maps probeMaps, name, what string) *ebpf.Program {
	var o struct {
		Prog *ebpf.Program `ebpf:"prog"`
	}
	progSpec := spec.Programs[name]
	if progSpec == nil {
		return nil
	}
	single := spec.Copy()
	single.Programs = map[string]*ebpf.ProgramSpec{"prog": progSpec}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		probeMapAllowed: maps.Allowed, probeMapCounters: maps.Counters, probeMapEvents: maps.Events,
		probeMapRatelimit: maps.Ratelimit, probeMapScratch: maps.Scratch, probeMapWatched: maps.Watched,
		probeMapWatchedMinors: maps.WatchedMinors,
	}}
	if err := single.LoadAndAssign(&o, opts); err != nil {
		p.log.Warn(what+" not covered: cannot load "+name, "err", err)
		return nil
	}
	return o.Prog
}

// loadIOUring adds the io_uring open completion program (tracepoint mode).
func (p *Probe) loadIOUring(spec *ebpf.CollectionSpec, maps probeMaps) {
	p.objs.TpIoUringComplete = p.loadExtra(spec, maps, probeProgTpIoUringComplete, "io_uring opens")
	if err := p.attachIOUring(); err != nil {
		p.log.Warn("io_uring opens not covered", "err", err)
	}
}

func (p *Probe) attachIOUring() error {
	if p.objs.TpIoUringComplete == nil {
		return nil
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: p.objs.TpIoUringComplete, AttachType: ebpf.AttachTraceRawTp})
	if err != nil {
		return fmt.Errorf("attach tp_btf/io_uring_complete: %w", err)
	}
	p.links = append(p.links, l)
	return nil
}

// ensureTracefs mounts tracefs at /sys/kernel/tracing when no tracefs is mounted.
func ensureTracefs() error {
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.TRACEFS_MAGIC {
			return nil
		}
	}
	if err := unix.Mount("nodev", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
		return fmt.Errorf("mount tracefs at /sys/kernel/tracing (needed for tracepoints): %w", err)
	}
	return nil
}

// bootOffset is wall time minus CLOCK_BOOTTIME, sampled now.
func bootOffset() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}

// Mode reports the attach mode in use (never ModeAuto).
func (p *Probe) Mode() Mode { return p.mode }

// CanDeny reports whether enforce mode fails the open itself (LSM) rather than killing
// the opener after the open (tracepoint).
func (p *Probe) CanDeny() bool { return p.mode == ModeLSM }

// Watch starts watching the tmpfs whose superblock device is dev (kernel encoding, see
// KernelDev), or updates its settings. id is returned in events as WatchID.
func (p *Probe) Watch(dev uint32, id uint32, enforce bool) error {
	w := probeWatch{Id: id}
	if enforce {
		w.Flags = 1
	}
	if dev>>20 != 0 {
		return fmt.Errorf("watch device %s: not an anonymous device (major 0), so not a tmpfs", FormatDev(dev))
	}
	if err := p.objs.Watched.Put(dev, w); err != nil {
		return fmt.Errorf("watch device %s: %w", FormatDev(dev), err)
	}
	return p.setMinor(dev, true)
}

// setMinor sets or clears dev's bit in the pre-filter bitmap.
func (p *Probe) setMinor(dev uint32, on bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var bm probeMinorBitmap
	if err := p.objs.WatchedMinors.Lookup(uint32(0), &bm); err != nil {
		return fmt.Errorf("read watched device bitmap: %w", err)
	}
	word, bit := (dev&0xfffff)/64, uint64(1)<<(dev%64)
	if on {
		bm.Bits[word] |= bit
	} else {
		bm.Bits[word] &^= bit
	}
	if err := p.objs.WatchedMinors.Update(uint32(0), &bm, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("update watched device bitmap: %w", err)
	}
	return nil
}

// Unwatch stops watching dev and removes its allowed readers.
func (p *Probe) Unwatch(dev uint32) error {
	var errs []error
	if dev>>20 == 0 {
		errs = append(errs, p.setMinor(dev, false))
	}
	if err := p.objs.Watched.Delete(dev); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("unwatch device %s: %w", FormatDev(dev), err))
	}
	p.mu.Lock()
	keys := p.allowed[dev]
	delete(p.allowed, dev)
	p.mu.Unlock()
	for k := range keys {
		if err := p.deleteAllow(k); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// AllowKey names an allowed reader of one watched device.
type AllowKey struct {
	Watch    uint32 // watched tmpfs device (kernel encoding)
	Exe      FileID // the executable
	CgroupID uint64 // 0: any cgroup
}

func (k AllowKey) raw() probeAllowKey {
	return probeAllowKey{ExeIno: k.Exe.Ino, CgroupId: k.CgroupID, ExeDev: k.Exe.Dev, WatchDev: k.Watch}
}

// Allow adds an allowed reader.
func (p *Probe) Allow(k AllowKey) error {
	if err := p.objs.Allowed.Put(k.raw(), uint8(1)); err != nil {
		return fmt.Errorf("allow %s on %s: %w", k.Exe, FormatDev(k.Watch), err)
	}
	p.mu.Lock()
	if p.allowed[k.Watch] == nil {
		p.allowed[k.Watch] = map[AllowKey]struct{}{}
	}
	p.allowed[k.Watch][k] = struct{}{}
	p.mu.Unlock()
	return nil
}

// Disallow removes an allowed reader.
func (p *Probe) Disallow(k AllowKey) error {
	p.mu.Lock()
	delete(p.allowed[k.Watch], k)
	p.mu.Unlock()
	return p.deleteAllow(k)
}

func (p *Probe) deleteAllow(k AllowKey) error {
	if err := p.objs.Allowed.Delete(k.raw()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("disallow %s on %s: %w", k.Exe, FormatDev(k.Watch), err)
	}
	return nil
}

// Counters are the probe's totals since load.
type Counters struct {
	Watched     uint64 // opens of regular files on watched tmpfs
	Allowed     uint64 // ... by allowed readers
	Flagged     uint64 // ... by anyone else
	Denied      uint64 // flagged opens stopped (enforce)
	RateLimited uint64 // flagged opens whose event was suppressed by rate limiting
	Dropped     uint64 // flagged opens whose event was lost: ring buffer full
	// DroppedPerCPU is Dropped by CPU.
	DroppedPerCPU []uint64
}

// Counters sums the per-CPU counters.
func (p *Probe) Counters() (Counters, error) {
	var c Counters
	dst := []*uint64{&c.Watched, &c.Allowed, &c.Flagged, &c.Denied, &c.RateLimited, &c.Dropped}
	for i, d := range dst {
		var per []uint64
		if err := p.objs.Counters.Lookup(uint32(i), &per); err != nil {
			return Counters{}, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range per {
			*d += v
		}
		if i == 5 {
			c.DroppedPerCPU = per
		}
	}
	return c, nil
}

// ErrClosed is returned by Read after Close.
var ErrClosed = errors.New("probe closed")

// Read blocks for the next event. It returns ErrClosed once the probe is closed. It is
// not safe for concurrent use.
func (p *Probe) Read() (Event, error) {
	err := p.reader.ReadInto(&p.rec)
	rec := p.rec
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return Event{}, ErrClosed
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return Event{}, err
		}
		return Event{}, fmt.Errorf("read ring buffer: %w", err)
	}
	ev, err := DecodeEvent(rec.RawSample)
	if err != nil {
		return Event{}, err
	}
	ev.Time = time.Unix(0, int64(ev.BootNs)+int64(p.bootToWall))
	return ev, nil
}

// ErrNoScan reports that the kernel refused the iterator ScanOpenFiles needs.
var ErrNoScan = errors.New("scan of open files unavailable")

// ScanOpenFiles reports, as events in attach mode "scan", every file on a watched tmpfs
// that a process not allowed to read it already has open: opened before the probe or the
// watch started, inherited, or received over a unix socket. Such events are alerts only.
// Call it after adding watches.
func (p *Probe) ScanOpenFiles() error {
	if p.objs.ScanOpenFiles == nil {
		return ErrNoScan
	}
	l, err := link.AttachIter(link.IterOptions{Program: p.objs.ScanOpenFiles})
	if err != nil {
		return fmt.Errorf("attach iter/task_file: %w", err)
	}
	defer l.Close()
	it, err := l.Open()
	if err != nil {
		return fmt.Errorf("open iter/task_file: %w", err)
	}
	defer it.Close()
	if _, err := io.Copy(io.Discard, it); err != nil {
		return fmt.Errorf("run iter/task_file: %w", err)
	}
	return nil
}

// ProgramStats sums the kernel's run statistics of the attach mode's main program (the
// kernel only counts while BPF statistics are enabled: ebpf.EnableStats).
func (p *Probe) ProgramStats() (ebpf.ProgramStats, error) {
	prog := p.objs.TpSysExitOpen
	if p.mode == ModeLSM {
		prog = p.objs.LsmFileOpen
	}
	if prog == nil {
		return ebpf.ProgramStats{}, errors.New("probe not loaded")
	}
	st, err := prog.Stats()
	if err != nil {
		return ebpf.ProgramStats{}, fmt.Errorf("program stats: %w", err)
	}
	return *st, nil
}

// SetDeadline makes a blocked Read return os.ErrDeadlineExceeded at t; the zero time
// blocks forever.
func (p *Probe) SetDeadline(t time.Time) { p.reader.SetDeadline(t) }

// Close detaches the programs and frees the maps. A Read in progress returns ErrClosed.
func (p *Probe) Close() error {
	p.closeOnce.Do(func() { p.closeErr = p.close() })
	return p.closeErr
}

func (p *Probe) close() error {
	var errs []error
	if p.reader != nil {
		errs = append(errs, p.reader.Close())
	}
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	errs = append(errs, p.closeObjects())
	return errors.Join(errs...)
}

// Detach removes the programs from the kernel's hooks while keeping maps and events; it
// is for the overhead benchmark, which alternates attached and detached rounds.
func (p *Probe) Detach() error {
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	return errors.Join(errs...)
}

// Attach re-attaches a probe after Detach.
func (p *Probe) Attach() error {
	if len(p.links) > 0 {
		return nil
	}
	switch p.mode {
	case ModeLSM:
		l, err := link.AttachLSM(link.LSMOptions{Program: p.objs.LsmFileOpen})
		if err != nil {
			return fmt.Errorf("attach lsm/file_open: %w", err)
		}
		p.links = append(p.links, l)
	case ModeTracepoint:
		for _, name := range openTracepoints {
			l, err := link.Tracepoint("syscalls", name, p.objs.TpSysExitOpen, nil)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("attach tracepoint syscalls/%s: %w", name, err)
			}
			p.links = append(p.links, l)
		}
		return p.attachIOUring()
	}
	return nil
}

func (p *Probe) closeObjects() error {
	var errs []error
	for _, c := range []interface{ Close() error }{
		p.objs.LsmFileOpen, p.objs.TpSysExitOpen, p.objs.TpIoUringComplete, p.objs.ScanOpenFiles,
		p.objs.Allowed, p.objs.Counters, p.objs.Events, p.objs.Ratelimit, p.objs.Scratch, p.objs.Watched, p.objs.WatchedMinors,
	} {
		if c != nil && !isNil(c) {
			errs = append(errs, c.Close())
		}
	}
	p.objs = probeObjects{}
	return errors.Join(errs...)
}

func isNil(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *ebpf.Program:
		return v == nil
	case *ebpf.Map:
		return v == nil
	}
	return false
}

// FileID is a file's identity: its superblock device (kernel encoding) and inode number.
type FileID struct {
	Dev uint32
	Ino uint64
}

func (f FileID) String() string { return fmt.Sprintf("%s:%d", FormatDev(f.Dev), f.Ino) }

// KernelDev converts a user-space st_dev to the kernel's dev_t encoding
// (major<<20 | minor) that BPF programs read from super_block.s_dev.
func KernelDev(stDev uint64) uint32 {
	return unix.Major(stDev)<<20 | unix.Minor(stDev)&0xfffff
}

// FormatDev renders a kernel dev_t as "major:minor".
func FormatDev(dev uint32) string {
	return fmt.Sprintf("%d:%d", dev>>20, dev&0xfffff)
}

// StatID returns the identity of the file at path, following symlinks.
func StatID(path string) (FileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return FileID{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return FileID{Dev: KernelDev(st.Dev), Ino: st.Ino}, nil
}

// Available reports why BPF programs cannot be loaded here, or nil when they can. Tests
// use it to skip with a reason.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	p, err := Load(Options{Mode: ModeTracepoint})
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("loading BPF refused: %w", err)
		}
		// Any other failure is a bug the caller's own Load reports.
		return nil
	}
	return p.Close()
}
