// Package agenttest holds test helpers shared by the agent's packages.
package agenttest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sidekey/sidekey/injector/spec"
)

// MountTmpfs mounts a fresh tmpfs on a temporary directory and unmounts it when the test
// ends. Mounting needs root (or CAP_SYS_ADMIN); without it the test fails with a reason.
func MountTmpfs(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32m,mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s (the agent tests need root to mount a tmpfs): %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// Clock is a settable clock for the agent's schedule.
type Clock struct{ T time.Time }

// Now returns the clock's time.
func (c *Clock) Now() time.Time { return c.T }

// Add moves the clock forward.
func (c *Clock) Add(d time.Duration) { c.T = c.T.Add(d) }

// Source parses a source string and panics on error; for literals in tests.
func Source(s string) *spec.Source {
	x, err := spec.ParseSource(s)
	if err != nil {
		panic(err)
	}
	return &x
}

// ReadFiles reads the named files under dir; a file that cannot be read maps to "ERROR: ...".
func ReadFiles(dir string, names map[string]string) map[string]string {
	got := map[string]string{}
	for name := range names {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			got[name] = "ERROR: " + err.Error()
			continue
		}
		got[name] = string(b)
	}
	return got
}

// LockedBuffer is a bytes.Buffer safe for a logger writing while the test reads.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
