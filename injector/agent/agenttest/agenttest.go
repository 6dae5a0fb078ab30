// Package agenttest holds test helpers shared by the agent's packages.
package agenttest

import (
	"os/exec"
	"testing"
	"time"
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
