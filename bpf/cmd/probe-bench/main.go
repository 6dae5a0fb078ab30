// Command probe-bench measures the probe's overhead (run as root, by `make bench-probe`).
//
// In alternating rounds with the probe detached (A) and attached (B) it times, per op:
//
//	rootfs-open   open+close of a file on the root filesystem
//	tmpfs-open    open+close of a file on an unwatched tmpfs
//	watched-open  open+close of a watched file by an allowed reader (this program)
//	pread-4k      a 4 KiB pread on an open fd of the watched file
//
// and prints each op's median ns/op for A and B and the ratio B/A. Then it opens a
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
	samples := map[string][2][]float64{}
	for _, o := range ops { // warm up
		if err := o.fn(iters / 10); err != nil {
			return err
		}
	}
	// Each round times every op detached and attached back to back, in ABBA order
	// across rounds, so drift in the machine's load hits both sides alike.
	for r := range rounds {
		for _, o := range ops {
			for i := range 2 {
				phase := i
				if r%2 == 1 {
					phase = 1 - i
				}
				if phase == 0 {
					err = p.Detach()
				} else {
					err = p.Attach()
				}
				if err != nil {
					return err
				}
				start := time.Now()
				if err := o.fn(iters); err != nil {
					return err
				}
				s := samples[o.name]
				s[phase] = append(s[phase], float64(time.Since(start).Nanoseconds())/float64(iters))
				samples[o.name] = s
			}
		}
	}
	if err := p.Attach(); err != nil {
		return err
	}
	c, err := p.Counters()
	if err != nil {
		return err
	}
	fmt.Printf("probe-bench: attach=%s rounds=%d iters=%d cpus=%d kernel=%s\n", p.Mode(), rounds, iters, runtime.NumCPU(), kernel())
	fmt.Printf("%-14s %12s %12s %8s\n", "op", "A ns/op", "B ns/op", "B/A")
	for _, o := range ops {
		a, b := median(samples[o.name][0]), median(samples[o.name][1])
		fmt.Printf("%-14s %12.1f %12.1f %8.3f\n", o.name, a, b, b/a)
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
	const batch = 100
	interval := time.Duration(float64(time.Second) * batch / float64(rate))
	start := time.Now()
	opened := 0
	for next := start; time.Since(start) < floodFor; next = next.Add(interval) {
		if err := openClose(target)(batch); err != nil {
			return err
		}
		opened += batch
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
	}
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
