// Package probetest holds test support for the probe's packages: skipping when BPF
// cannot load, real tmpfs mounts, and executables with their own inode.
package probetest

import (
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sidekey/sidekey/bpf"
)

var (
	availOnce sync.Once
	availErr  error
)

// RequireBPF skips the test when this process cannot load BPF programs (not root, or
// the kernel refuses), the way cilium/ebpf's tests do. Any other failure is left to the
// test's own Load, which fails.
func RequireBPF(tb testing.TB) {
	tb.Helper()
	availOnce.Do(func() { availErr = bpf.Available() })
	if availErr != nil {
		tb.Skipf("BPF unavailable: %v", availErr)
	}
}

// MountTmpfs mounts a fresh tmpfs on a new directory and unmounts it at the end of the test.
func MountTmpfs(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "sidekey-probe-tmpfs-")
	if err != nil {
		tb.Fatal(err)
	}
	MountTmpfsAt(tb, dir)
	tb.Cleanup(func() { os.Remove(dir) })
	return dir
}

// MountTmpfsAt mounts a fresh tmpfs on dir (created if missing) until the test ends.
func MountTmpfsAt(tb testing.TB, dir string) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=8m,mode=0700"); err != nil {
		tb.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// CopyExe copies the executable src into a new temporary directory on disk under name,
// so that it has its own (device, inode) — a distinct allowed reader.
func CopyExe(tb testing.TB, src, name string) string {
	tb.Helper()
	in, err := os.Open(src)
	if err != nil {
		tb.Fatal(err)
	}
	defer in.Close()
	dst := filepath.Join(tb.TempDir(), name)
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		tb.Fatal(err)
	}
	if err := out.Close(); err != nil {
		tb.Fatal(err)
	}
	return dst
}

// WriteFile writes a file for a test, failing it on error.
func WriteFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
}
