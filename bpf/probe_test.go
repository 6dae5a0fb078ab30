package bpf_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidekey/sidekey/bpf"
	"github.com/sidekey/sidekey/bpf/policy"
	"github.com/sidekey/sidekey/bpf/probetest"
)

// harness is a loaded probe whose events are collected in the background.
type harness struct {
	p      *bpf.Probe
	state  *policy.State
	events chan bpf.Event
	seq    int
}

func start(t *testing.T, opts bpf.Options) *harness {
	t.Helper()
	probetest.RequireBPF(t)
	if opts.Mode == "" {
		opts.Mode = bpf.ModeTracepoint
	}
	p, err := bpf.Load(opts)
	if err != nil {
		t.Fatalf("Load(%+v): %v", opts, err)
	}
	h := &harness{p: p, state: policy.NewState(p), events: make(chan bpf.Event, 4096)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := p.Read()
			if err != nil {
				if !errors.Is(err, bpf.ErrClosed) {
					t.Errorf("Read: %v", err)
				}
				return
			}
			h.events <- ev
		}
	}()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		<-done
	})
	return h
}

// watch watches the tmpfs mounted at dir, allowing the executables.
func (h *harness) watch(t *testing.T, dir string, enforce bool, allow ...string) policy.Watch {
	t.Helper()
	ws, err := policy.Standalone([]string{dir}, allow, enforce)
	if err != nil {
		t.Fatal(err)
	}
	w, err := h.state.Put(dir, ws[0])
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// until opens a fresh marker file on the watched tmpfs dir from this test process and
// returns every event of other processes seen before the marker's own event. Events in
// the ring buffer are ordered by reservation, so nothing opened before the marker can
// arrive after it.
func (h *harness) until(t *testing.T, dir string) []bpf.Event {
	t.Helper()
	h.seq++
	name := filepath.Join(dir, ".marker-"+itoa(h.seq))
	probetest.WriteFile(t, name, "m")
	var got []bpf.Event
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-h.events:
			if ev.PID == uint32(os.Getpid()) {
				if ev.File == "/"+filepath.Base(name) {
					return got
				}
				continue
			}
			got = append(got, ev)
		case <-deadline:
			t.Fatalf("no event for marker %s within 10s; events so far: %+v", name, got)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func run(t *testing.T, dir, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	return string(out), err
}

func mustRun(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	out, err := run(t, dir, name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out
}

func TestAllowedReaderIsNotFlagged(t *testing.T) {
	h := start(t, bpf.Options{})
	dir := probetest.MountTmpfs(t)
	probetest.WriteFile(t, filepath.Join(dir, "token"), "s3cr3t")
	allowed := probetest.CopyExe(t, "/bin/cat", "app")
	h.watch(t, dir, false, allowed)

	before, err := h.p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRun(t, "/", allowed, filepath.Join(dir, "token")); got != "s3cr3t" {
		t.Fatalf("allowed reader read %q; want the secret", got)
	}
	if evs := h.until(t, dir); len(evs) != 0 {
		t.Fatalf("allowed reader flagged: %+v", evs)
	}
	after, err := h.p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Allowed - before.Allowed; d != 1 {
		t.Errorf("allowed counter grew by %d; want 1", d)
	}
}

func TestFlaggedReads(t *testing.T) {
	h := start(t, bpf.Options{})
	dir := probetest.MountTmpfs(t)
	allowed := probetest.CopyExe(t, "/bin/cat", "app")
	h.watch(t, dir, false, allowed)
	linkDir := t.TempDir() // on the root filesystem, not the tmpfs
	catPath, err := filepath.EvalSymlinks("/bin/cat")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		setup    func(t *testing.T, file string) (cwd, arg string)
		wantFile string // relative to the tmpfs root; "" = the file itself
	}{
		{"absolute path", func(t *testing.T, f string) (string, string) { return "/", f }, ""},
		{"relative path", func(t *testing.T, f string) (string, string) { return dir, "./" + filepath.Base(f) }, ""},
		{"hard link", func(t *testing.T, f string) (string, string) {
			l := f + ".link"
			if err := os.Link(f, l); err != nil {
				t.Fatal(err)
			}
			return "/", l
		}, "link"},
		{"renamed", func(t *testing.T, f string) (string, string) {
			r := filepath.Join(dir, "sub", "renamed-"+filepath.Base(f))
			if err := os.Rename(f, r); err != nil {
				t.Fatal(err)
			}
			return "/", r
		}, "renamed"},
		{"symlink on another filesystem", func(t *testing.T, f string) (string, string) {
			l := filepath.Join(linkDir, filepath.Base(f))
			if err := os.Symlink(f, l); err != nil {
				t.Fatal(err)
			}
			return "/", l
		}, ""},
		{"through /proc/self/root", func(t *testing.T, f string) (string, string) { return "/", "/proc/self/root" + f }, ""},
		{"through a bind mount of a subdirectory", func(t *testing.T, f string) (string, string) {
			sub := filepath.Join(dir, "sub", "bind-"+filepath.Base(f))
			if err := os.Mkdir(sub, 0o700); err != nil {
				t.Fatal(err)
			}
			moved := filepath.Join(sub, "secret")
			if err := os.Rename(f, moved); err != nil {
				t.Fatal(err)
			}
			target := t.TempDir()
			if err := unix.Mount(sub, target, "", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
			return "/", filepath.Join(target, "secret")
		}, "bind"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A fresh file per case: rate limiting is per (reader, file).
			file := filepath.Join(dir, "token"+itoa(i))
			probetest.WriteFile(t, file, "s3cr3t")
			id, err := bpf.StatID(file)
			if err != nil {
				t.Fatal(err)
			}
			cwd, arg := tt.setup(t, file)
			cmd := exec.Command("/bin/cat", arg)
			cmd.Dir = cwd
			out, err := cmd.Output()
			if err != nil || string(out) != "s3cr3t" {
				t.Fatalf("cat %s = %q, %v; want the secret (audit mode)", arg, out, err)
			}
			evs := h.until(t, dir)
			if len(evs) != 1 {
				t.Fatalf("got %d events; want 1: %+v", len(evs), evs)
			}
			ev := evs[0]
			wantFile := "/" + filepath.Base(file)
			switch tt.wantFile {
			case "link":
				wantFile += ".link"
			case "renamed":
				wantFile = "/sub/renamed-" + filepath.Base(file)
			case "bind":
				wantFile = "/sub/bind-" + filepath.Base(file) + "/secret"
			}
			if ev.Verdict != bpf.VerdictAlert || ev.Exe != catPath || ev.Comm != "cat" ||
				ev.File != wantFile || ev.FileID != id || ev.PID != uint32(cmd.Process.Pid) ||
				ev.UID != 0 || ev.Mode != bpf.ModeTracepoint || ev.Truncated {
				t.Errorf("event = %+v; want alert by pid %d exe %s of %s (%v)", ev, cmd.Process.Pid, catPath, wantFile, id)
			}
			if time.Since(ev.Time) > time.Minute || time.Since(ev.Time) < 0 {
				t.Errorf("event time %v is not now", ev.Time)
			}
		})
	}
}

func TestUnwatchedTmpfsIsIgnored(t *testing.T) {
	h := start(t, bpf.Options{})
	watched := probetest.MountTmpfs(t)
	other := probetest.MountTmpfs(t)
	h.watch(t, watched, false)
	probetest.WriteFile(t, filepath.Join(other, "token"), "x")
	mustRun(t, "/", "/bin/cat", filepath.Join(other, "token"))
	if evs := h.until(t, watched); len(evs) != 0 {
		t.Fatalf("open on an unwatched tmpfs flagged: %+v", evs)
	}
}

func TestUnwatchStopsFlagging(t *testing.T) {
	h := start(t, bpf.Options{})
	dir := probetest.MountTmpfs(t)
	probetest.WriteFile(t, filepath.Join(dir, "token"), "x")
	h.watch(t, dir, true)
	if err := h.state.Delete(dir); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, "/", "/bin/cat", filepath.Join(dir, "token")); out != "x" {
		t.Fatalf("cat after unwatch = %q", out)
	}
	h.watch(t, dir, false) // to get the marker seen
	if evs := h.until(t, dir); len(evs) != 0 {
		t.Fatalf("unwatched tmpfs flagged: %+v", evs)
	}
}

func TestEnforceKillsReaderBeforeItReads(t *testing.T) {
	h := start(t, bpf.Options{})
	dir := probetest.MountTmpfs(t)
	file := filepath.Join(dir, "token")
	probetest.WriteFile(t, file, "s3cr3t")
	allowed := probetest.CopyExe(t, "/bin/cat", "app")
	h.watch(t, dir, true, allowed)
	audit := probetest.MountTmpfs(t) // the test's own marker opens must not be killed
	h.watch(t, audit, false)

	out, err := run(t, "/", "/bin/cat", file)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("cat in enforce mode: err = %v, output %q; want killed", err, out)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL || out != "" {
		t.Fatalf("cat in enforce mode: %v, output %q; want SIGKILL and no output", ws, out)
	}
	if got := mustRun(t, "/", allowed, file); got != "s3cr3t" {
		t.Fatalf("allowed reader in enforce mode read %q", got)
	}
	evs := h.until(t, audit)
	if len(evs) != 1 || evs[0].Verdict != bpf.VerdictDeny || evs[0].Comm != "cat" {
		t.Fatalf("events = %+v; want one deny by cat", evs)
	}
	c, err := h.p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Denied != 1 || c.Allowed != 1 {
		t.Errorf("counters = %+v; want 1 denied, 1 allowed", c)
	}
}

func TestRateLimitCountsSuppressed(t *testing.T) {
	const interval = 500 * time.Millisecond
	h := start(t, bpf.Options{RateInterval: interval})
	dir := probetest.MountTmpfs(t)
	file := filepath.Join(dir, "token")
	probetest.WriteFile(t, file, "x")
	h.watch(t, dir, false)

	open := func() {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	started := time.Now()
	for range 4 {
		open()
	}
	if time.Since(started) > interval/2 {
		t.Skip("machine too slow to open a file 4 times within the rate-limit window")
	}
	time.Sleep(interval + 100*time.Millisecond)
	open()

	var got []bpf.Event
	for len(got) < 2 {
		select {
		case ev := <-h.events:
			if ev.File == "/token" {
				got = append(got, ev)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("events = %+v; want 2", got)
		}
	}
	if got[0].Suppressed != 0 || got[1].Suppressed != 3 {
		t.Errorf("suppressed = %d, %d; want 0, 3", got[0].Suppressed, got[1].Suppressed)
	}
	c, err := h.p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.RateLimited != 3 || c.Flagged < 5 {
		t.Errorf("counters = %+v; want 3 rate-limited of >= 5 flagged", c)
	}
}

// TestFloodDropsAreCounted fills a one-page ring buffer nobody reads: every flagged open
// must be either delivered or counted as dropped.
func TestFloodDropsAreCounted(t *testing.T) {
	probetest.RequireBPF(t)
	p, err := bpf.Load(bpf.Options{Mode: bpf.ModeTracepoint, RingBufferBytes: uint32(os.Getpagesize())})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dir := probetest.MountTmpfs(t)
	file := filepath.Join(dir, "token")
	probetest.WriteFile(t, file, "x")
	ws, err := policy.Standalone([]string{dir}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policy.NewState(p).Put(dir, ws[0]); err != nil {
		t.Fatal(err)
	}
	const opens = 2000
	for range opens {
		fd, err := unix.Open(file, unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
	}
	c, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var delivered uint64
	for {
		p.SetDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := p.Read(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			t.Fatal(err)
		}
		delivered++
	}
	var perCPU uint64
	for _, d := range c.DroppedPerCPU {
		perCPU += d
	}
	if c.Flagged != opens || c.Dropped == 0 || delivered+c.Dropped != c.Flagged || perCPU != c.Dropped {
		t.Errorf("flagged %d, delivered %d, dropped %d (per CPU %v); want %d flagged = delivered + dropped, some dropped",
			c.Flagged, delivered, c.Dropped, c.DroppedPerCPU, opens)
	}
}

func TestLSMModeFallsBack(t *testing.T) {
	probetest.RequireBPF(t)
	p, err := bpf.Load(bpf.Options{Mode: bpf.ModeAuto})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// Either mode is right; which one depends on whether the kernel allows BPF LSM.
	lsm, lerr := bpf.Load(bpf.Options{Mode: bpf.ModeLSM})
	if lerr == nil {
		lsm.Close()
		if p.Mode() != bpf.ModeLSM {
			t.Errorf("auto chose %s although LSM loads", p.Mode())
		}
		return
	}
	if !errors.Is(lerr, bpf.ErrLSMRefused) {
		t.Fatalf("Load(lsm) = %v; want ErrLSMRefused", lerr)
	}
	if p.Mode() != bpf.ModeTracepoint {
		t.Errorf("auto chose %s although LSM is refused", p.Mode())
	}
}

func TestScanFindsFilesAlreadyOpen(t *testing.T) {
	h := start(t, bpf.Options{})
	dir := probetest.MountTmpfs(t)
	file := filepath.Join(dir, "token")
	probetest.WriteFile(t, file, "s3cr3t")
	allowed := probetest.CopyExe(t, "/bin/sleep", "app")

	// Opened before the watch: a sleep inherits the fd; an allowed reader holds one too.
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	holders := []*exec.Cmd{exec.Command("/bin/sleep", "60"), exec.Command(allowed, "60")}
	for _, c := range holders {
		c.ExtraFiles = []*os.File{f}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	}
	f.Close()
	h.watch(t, dir, true, allowed) // enforce: a scan must still only report
	if err := h.p.ScanOpenFiles(); err != nil {
		t.Fatal(err)
	}
	sleepPath, _ := filepath.EvalSymlinks("/bin/sleep")
	audit := probetest.MountTmpfs(t) // for the marker: this process may not open in dir
	h.watch(t, audit, false)
	got := h.until(t, audit)
	if len(got) != 1 {
		t.Fatalf("scan events = %+v; want one, for the sleep not allowed", got)
	}
	ev := got[0]
	if ev.PID != uint32(holders[0].Process.Pid) || ev.Exe != sleepPath || ev.File != "/token" ||
		ev.Verdict != bpf.VerdictAlert || ev.Mode != bpf.ModeScan || ev.Comm != "sleep" {
		t.Errorf("scan event = %+v; want an alert for sleep pid %d holding /token", ev, holders[0].Process.Pid)
	}
	if err := holders[0].Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the scan killed the holder: %v", err)
	}
}
