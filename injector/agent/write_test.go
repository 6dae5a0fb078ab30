package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/sidekey/sidekey/injector/agent/agenttest"
	"github.com/sidekey/sidekey/injector/spec"
)

func mountTmpfs(t *testing.T) string { return agenttest.MountTmpfs(t) }

// diskDir returns a directory on a disk-backed file system.
func diskDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if CheckMemoryFS(dir) == nil {
		t.Fatalf("%s is on tmpfs; the disk refusal test needs a disk-backed TMPDIR", dir)
	}
	return dir
}

func TestWriterRefusesDisk(t *testing.T) {
	dir := diskDir(t)
	_, err := NewWriter(dir, false)
	if !errors.Is(err, ErrNotMemory) {
		t.Fatalf("NewWriter(disk dir, allowDisk=false) = %v; want ErrNotMemory", err)
	}
	for _, want := range []string{dir, "tmpfs", "medium: Memory", "--allow-disk"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	w, err := NewWriter(dir, true)
	if err != nil {
		t.Fatalf("NewWriter(disk dir, allowDisk=true): %v", err)
	}
	defer w.Close()
	if _, _, err := w.Write("x", []byte("v"), 0o400, nil, nil); err != nil {
		t.Fatalf("Write with --allow-disk: %v", err)
	}

	mem := mountTmpfs(t)
	mw, err := NewWriter(mem, false)
	if err != nil {
		t.Fatalf("NewWriter(tmpfs): %v", err)
	}
	defer mw.Close()
	if _, _, err := mw.Write("ok", []byte("v"), 0o400, nil, nil); err != nil {
		t.Fatalf("Write to tmpfs: %v", err)
	}
}

func TestWriterAttributes(t *testing.T) {
	dir := mountTmpfs(t)
	w, err := NewWriter(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	uid, gid := int64(1234), int64(5678)
	tests := []struct {
		name        string
		file        string
		content     string
		mode        spec.Mode
		uid, gid    *int64
		wantChanged bool
		wantExisted bool
	}{
		{"new file", "db/password", "one", 0o440, &uid, &gid, true, false},
		{"same content", "db/password", "one", 0o440, &uid, &gid, false, true},
		{"new content", "db/password", "two", 0o440, &uid, &gid, true, true},
		{"mode drift fixed", "db/password", "two", 0o400, &uid, &gid, false, true},
		{"top level, no owner", "token", "t", 0o400, nil, nil, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			changed, existed, err := w.Write(tt.file, []byte(tt.content), tt.mode, tt.uid, tt.gid)
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			if changed != tt.wantChanged || existed != tt.wantExisted {
				t.Errorf("Write(%q) = changed %v, existed %v; want %v, %v", tt.file, changed, existed, tt.wantChanged, tt.wantExisted)
			}
			p := filepath.Join(dir, tt.file)
			b, err := os.ReadFile(p)
			if err != nil || string(b) != tt.content {
				t.Fatalf("read back %q, %v; want %q", b, err, tt.content)
			}
			fi, _ := os.Stat(p)
			if got := fi.Mode().Perm(); got != os.FileMode(tt.mode) {
				t.Errorf("mode = %v; want %v", got, os.FileMode(tt.mode))
			}
			if tt.uid != nil {
				st := fileOwner(t, p)
				if st != [2]int64{uid, gid} {
					t.Errorf("owner = %v; want %d:%d", st, uid, gid)
				}
			}
		})
	}
	fi, err := os.Stat(filepath.Join(dir, "db"))
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("parent dir: %v, %v; want mode 0750", fi.Mode().Perm(), err)
	}
	assertNoTemp(t, dir)
}

func TestWriterStaysInside(t *testing.T) {
	dir := mountTmpfs(t)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, name := range []string{"escape/x", "../x", "/etc/x", ".sidekey-x"} {
		if _, _, err := w.Write(name, []byte("secret"), 0o400, nil, nil); err == nil {
			t.Errorf("Write(%q) succeeded; want refused", name)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("files written outside the mount: %v", ents)
	}
}

// TestWriterAtomic rotates a file many times while readers open and read it in a loop: every
// read must be one complete version, never empty or partial.
func TestWriterAtomic(t *testing.T) {
	dir := mountTmpfs(t)
	w, err := NewWriter(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	version := func(i int) []byte {
		// Sizes vary from a few bytes to 200 KiB so a partial write would show.
		body := bytes.Repeat([]byte{byte('a' + i%26)}, (i*7919)%(200<<10))
		return fmt.Appendf(nil, "BEGIN %d\n%s\nEND %d\n", i, body, i)
	}
	const rotations = 1500
	if _, _, err := w.Write("cert.pem", version(0), 0o444, nil, nil); err != nil {
		t.Fatal(err)
	}
	var (
		stop  atomic.Bool
		reads atomic.Int64
		wg    sync.WaitGroup
		bad   = make(chan string, 1)
	)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				b, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
				reads.Add(1)
				if err != nil {
					select {
					case bad <- fmt.Sprintf("read error: %v", err):
					default:
					}
					return
				}
				var i int
				if _, err := fmt.Sscanf(string(b), "BEGIN %d\n", &i); err != nil || !bytes.Equal(b, version(i)) {
					select {
					case bad <- fmt.Sprintf("partial read of %d bytes", len(b)):
					default:
					}
					return
				}
			}
		}()
	}
	for i := 1; i <= rotations; i++ {
		if _, _, err := w.Write("cert.pem", version(i), 0o444, nil, nil); err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	select {
	case msg := <-bad:
		t.Fatalf("a reader saw a non-atomic file after %d reads: %s", reads.Load(), msg)
	default:
	}
	if reads.Load() < 100 {
		t.Errorf("only %d reads during %d rotations; the test proves little", reads.Load(), rotations)
	}
	t.Logf("%d reads during %d rotations, all complete", reads.Load(), rotations)
	assertNoTemp(t, dir)
}

func fileOwner(t *testing.T, p string) [2]int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return [2]int64{int64(st.Uid), int64(st.Gid)}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".sidekey-") {
			t.Errorf("temp file left behind: %s", p)
		}
		return nil
	})
}
