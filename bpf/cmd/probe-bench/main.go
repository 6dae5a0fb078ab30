// Command probe-bench measures the probe's overhead (run as root, by `make bench-probe`).
//
// In alternating rounds with the probe detached (A) and attached (B) it times, per op:
//
//	rootfs-open   open+close of a file on the root filesystem
//	tmpfs-open    open+close of a file on an unwatched tmpfs
//	watched-open  open+close of a watched file by an allowed reader (this program)
//	pread-4k      a 4 KiB pread on an open fd of the watched file
//
// and prints each op's median ns/op (thread CPU time, so preemption by other processes
// stays out) for A and B and the ratio B/A. Then it opens a
// watched file it is not allowed to read at a paced rate (default 100k/s) with rate
// limiting off, consumes the events, and checks that every flagged open is accounted
// for: delivered, dropped (ring buffer full, counted per CPU) or rate-limited.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sidekey/sidekey/bpf"
	"github.com/sidekey/sidekey/bpf/policy"
)

func main() {
	rounds := flag.Int("rounds", 9, "A/B round pairs")
	iters := flag.Int("iters", 20000, "operations per op per round")
	rate := flag.Int("flood-rate", 100000, "flagged opens per second in the drop check")
	floodFor := flag.Duration("flood-for", 3*time.Second, "length of the drop check")
	attach := flag.String("attach", "auto", "attach mode")
	flag.Parse()
	if err := run(*rounds, *iters, *rate, *floodFor, *attach); err != nil {
		fmt.Fprintln(os.Stderr, "probe-bench:", err)
		os.Exit(1)
	}
}

func mountTmpfs() (string, func(), error) {
	dir, err := os.MkdirTemp("", "probe-bench-")
	if err != nil {
		return "", nil, err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		os.Remove(dir)
		return "", nil, fmt.Errorf("mount tmpfs: %w", err)
	}
	return dir, func() { unix.Unmount(dir, unix.MNT_DETACH); os.Remove(dir) }, nil
}

func writeFile(path string) error {
	return os.WriteFile(path, make([]byte, 64<<10), 0o600)
}

type op struct {
	name string
	fn   func(n int) error
}

func openClose(path string) func(int) error {
	return func(n int) error {
		for range n {
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open %s: %w", path, err)
			}
			unix.Close(fd)
		}
		return nil
	}
}

func run(rounds, iters, rate int, floodFor time.Duration, attach string) error {
	runtime.LockOSThread()
	mode, err := bpf.ParseMode(attach)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	rootDir, err := os.MkdirTemp("/var/tmp", "probe-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(rootDir)
	rootFile := filepath.Join(rootDir, "file")
	unwatched, undo1, err := mountTmpfs()
	if err != nil {
		return err
	}
	defer undo1()
	watched, undo2, err := mountTmpfs()
	if err != nil {
		return err
	}
	defer undo2()
	flagged, undo3, err := mountTmpfs()
	if err != nil {
		return err
	}
	defer undo3()
	for _, f := range []string{rootFile, filepath.Join(unwatched, "file"), filepath.Join(watched, "file"), filepath.Join(flagged, "file")} {
		if err := writeFile(f); err != nil {
			return err
		}
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	p, err := bpf.Load(bpf.Options{Mode: mode, Logger: log})
	if err != nil {
		return err
	}
	defer p.Close()
	state := policy.NewState(p)
	ws, err := policy.Standalone([]string{watched}, []string{self}, false)
	if err != nil {
		return err
	}
	if _, err := state.Put("watched", ws[0]); err != nil {
		return err
	}

	preadFD, err := unix.Open(filepath.Join(watched, "file"), unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(preadFD)
	buf := make([]byte, 4096)
	ops := []op{
		{"rootfs-open", openClose(rootFile)},
		{"tmpfs-open", openClose(filepath.Join(unwatched, "file"))},
		{"watched-open", openClose(filepath.Join(watched, "file"))},
		{"pread-4k", func(n int) error {
			for i := range n {
				if _, err := unix.Pread(preadFD, buf, int64(i%16)*4096); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	samples := map[string][3][]float64{}
	for _, o := range ops { // warm up
		if err := o.fn(iters / 10); err != nil {
			return err
		}
	}
	// The floor: an empty program on the same tracepoints, i.e. what the kernel's
	// syscall tracepoint machinery costs before the probe runs one instruction.
	floor, err := newFloor(p.Mode())
	if err != nil {
		return err
	}
	defer floor.Close()

	// Each round times every op detached (A), with the empty program (F) and with the
	// probe (B), back to back in a rotating order, so drift in the machine's load hits
	// all alike.
	for r := range rounds {
		for _, o := range ops {
			for i := range 3 {
				phase := (i + r) % 3
				if err := p.Detach(); err != nil {
					return err
				}
				floor.detach()
				switch phase {
				case 1:
					err = p.Attach()
				case 2:
					err = floor.attach()
				}
				if err != nil {
					return err
				}
				// Let (de)attaching settle: tracepoint enable/disable patches code and
				// flags every task; time only the steady state.
				if err := o.fn(iters / 10); err != nil {
					return err
				}
				start := threadCPU()
				if err := o.fn(iters); err != nil {
					return err
				}
				s := samples[o.name]
				s[phase] = append(s[phase], float64(threadCPU()-start)/float64(iters))
				samples[o.name] = s
			}
		}
	}
	floor.detach()
	if err := p.Attach(); err != nil {
		return err
	}
	c, err := p.Counters()
	if err != nil {
		return err
	}
	fmt.Printf("probe-bench: attach=%s rounds=%d iters=%d cpus=%d kernel=%s\n", p.Mode(), rounds, iters, runtime.NumCPU(), kernel())
	fmt.Printf("%-14s %10s %10s %10s %7s %7s\n", "op", "A ns/op", "F ns/op", "B ns/op", "F/A", "B/A")
	for _, o := range ops {
		a, b, f := median(samples[o.name][0]), median(samples[o.name][1]), median(samples[o.name][2])
		fmt.Printf("%-14s %10.1f %10.1f %10.1f %7.3f %7.3f\n", o.name, a, f, b, f/a, b/a)
	}
	fmt.Println("A: detached; F: an empty program on the same hooks (the kernel's floor); B: the probe")

	// The probe program's own run time per invocation, from the kernel's BPF run
	// statistics (enabled only for this pass: they cost a clock read per run).
	if stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
		fmt.Println("program run time: BPF statistics unavailable:", err)
	} else {
		// The statistics' own cost per run, from the empty program alone on the hooks.
		statsCost := 0.0
		if floor.prog != nil {
			if err := p.Detach(); err != nil {
				return err
			}
			if err := floor.attach(); err != nil {
				return err
			}
			before, _ := floor.prog.Stats()
			if err := ops[0].fn(iters); err != nil {
				return err
			}
			after, _ := floor.prog.Stats()
			floor.detach()
			if err := p.Attach(); err != nil {
				return err
			}
			if before != nil && after != nil && after.RunCount > before.RunCount {
				statsCost = float64(after.Runtime-before.Runtime) / float64(after.RunCount-before.RunCount)
			}
			fmt.Printf("empty program under statistics: %.1f ns/run (the statistics' own cost, subtracted below)\n", statsCost)
		}
		fmt.Printf("%-14s %14s %12s %12s\n", "op", "program ns/run", "runs/op", "net/A ns/op")
		for _, o := range ops {
			before, err := p.ProgramStats()
			if err != nil {
				return err
			}
			if err := o.fn(iters); err != nil {
				return err
			}
			after, err := p.ProgramStats()
			if err != nil {
				return err
			}
			runs := after.RunCount - before.RunCount
			if float64(runs) < float64(iters)/2 {
				fmt.Printf("%-14s %14s %12.2f %12s\n", o.name, "-", float64(runs)/float64(iters), "0")
				continue
			}
			ns := float64(after.Runtime-before.Runtime)/float64(runs) - statsCost
			fmt.Printf("%-14s %14.1f %12.2f %12.3f\n", o.name, ns, float64(runs)/float64(iters), ns*float64(runs)/float64(iters)/median(samples[o.name][0]))
		}
		stats.Close()
	}
	if c.Flagged != 0 || c.Allowed == 0 {
		return fmt.Errorf("benchmark opens were flagged (%+v): the allowed reader did not match", c)
	}

	// Drop check: paced flagged opens, rate limiting off, a consumer draining events.
	fp, err := bpf.Load(bpf.Options{Mode: p.Mode(), Logger: log})
	if err != nil {
		return err
	}
	defer fp.Close()
	fws, err := policy.Standalone([]string{flagged}, nil, false)
	if err != nil {
		return err
	}
	if _, err := policy.NewState(fp).Put("flagged", fws[0]); err != nil {
		return err
	}
	var delivered atomic.Uint64
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for {
			if _, err := fp.Read(); err != nil {
				if errors.Is(err, bpf.ErrClosed) {
					return
				}
				continue
			}
			delivered.Add(1)
		}
	}()
	target := filepath.Join(flagged, "file")
	// Paced openers, one per CPU, each at rate/threads, in batches of 100.
	const batch = 100
	threads := runtime.NumCPU()
	interval := time.Duration(float64(time.Second) * batch * float64(threads) / float64(rate))
	start := time.Now()
	var openedAll atomic.Int64
	errc := make(chan error, threads)
	for range threads {
		go func() {
			runtime.LockOSThread()
			for next := start; time.Since(start) < floodFor; next = next.Add(interval) {
				if err := openClose(target)(batch); err != nil {
					errc <- err
					return
				}
				openedAll.Add(batch)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
			}
			errc <- nil
		}()
	}
	for range threads {
		if err := <-errc; err != nil {
			return err
		}
	}
	opened := int(openedAll.Load())
	elapsed := time.Since(start)
	// Wait for the consumer to drain the ring buffer: no new event for 300ms.
	for last := delivered.Load(); ; {
		time.Sleep(300 * time.Millisecond)
		now := delivered.Load()
		if now == last {
			break
		}
		last = now
	}
	fc, err := fp.Counters()
	if err != nil {
		return err
	}
	got := delivered.Load()
	fp.Close()
	<-consumed
	unaccounted := int64(fc.Flagged) - int64(got) - int64(fc.Dropped) - int64(fc.RateLimited)
	fmt.Printf("flood: %d flagged opens in %s (%.0f/s): delivered %d, dropped %d (per CPU %v), rate-limited %d, unaccounted %d\n",
		fc.Flagged, elapsed.Round(time.Millisecond), float64(opened)/elapsed.Seconds(), got, fc.Dropped, fc.DroppedPerCPU, fc.RateLimited, unaccounted)
	if unaccounted != 0 || fc.Flagged != uint64(opened) {
		return fmt.Errorf("flood: %d opens, %d flagged, %d unaccounted", opened, fc.Flagged, unaccounted)
	}
	return nil
}

// threadCPU is the CPU time of the calling thread (user + system), in ns. Timing with it
// rather than the wall clock keeps time spent preempted by other processes out of the
// numbers; the main goroutine is locked to its thread.
func threadCPU() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

// floorProg is an empty program attached where the probe attaches.
type floorProg struct {
	mode  bpf.Mode
	prog  *ebpf.Program
	links []link.Link
}

func newFloor(mode bpf.Mode) (*floorProg, error) {
	if mode != bpf.ModeTracepoint {
		// The floor is measured for tracepoints only; in lsm mode F repeats A.
		return &floorProg{mode: mode}, nil
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.TracePoint, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("load empty program: %w", err)
	}
	return &floorProg{mode: mode, prog: prog}, nil
}

func (f *floorProg) attach() error {
	if f.prog == nil {
		return nil
	}
	for _, tp := range bpf.OpenTracepoints() {
		l, err := link.Tracepoint("syscalls", tp, f.prog, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		f.links = append(f.links, l)
	}
	return nil
}

func (f *floorProg) detach() {
	for _, l := range f.links {
		l.Close()
	}
	f.links = nil
}

func (f *floorProg) Close() {
	f.detach()
	if f.prog != nil {
		f.prog.Close()
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func kernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}
