package bpf_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sidekey/sidekey/bpf"
	"github.com/sidekey/sidekey/bpf/probetest"
)

// ioUringParams is struct io_uring_params.
type ioUringParams struct {
	SqEntries, CqEntries, Flags, SqThreadCPU, SqThreadIdle, Features, WqFd uint32
	Resv                                                                   [3]uint32
	SqOff                                                                  struct {
		Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
		UserAddr                                                        uint64
	}
	CqOff struct {
		Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1 uint32
		UserAddr                                                        uint64
	}
}

// ioUringOpenat opens path with one IORING_OP_OPENAT on a fresh ring: no open(2)
// syscall is made, so only the io_uring completion program can see it.
func ioUringOpenat(path string) (int, error) {
	var p ioUringParams
	ring, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return -1, fmt.Errorf("io_uring_setup: %w", errno)
	}
	defer unix.Close(int(ring))
	if p.Features&1 == 0 { // IORING_FEAT_SINGLE_MMAP
		return -1, errors.New("io_uring without IORING_FEAT_SINGLE_MMAP")
	}
	size := max(int(p.SqOff.Array+p.SqEntries*4), int(p.CqOff.Cqes+p.CqEntries*16))
	rings, err := unix.Mmap(int(ring), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return -1, fmt.Errorf("mmap rings: %w", err)
	}
	defer unix.Munmap(rings)
	sqes, err := unix.Mmap(int(ring), 0x10000000, int(p.SqEntries)*64, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return -1, fmt.Errorf("mmap sqes: %w", err)
	}
	defer unix.Munmap(sqes)

	name := append([]byte(path), 0)
	sqe := sqes[:64]
	clear(sqe)
	sqe[0] = 18 // IORING_OP_OPENAT
	atFDCWD := int32(unix.AT_FDCWD)
	binary.LittleEndian.PutUint32(sqe[4:], uint32(atFDCWD))
	binary.LittleEndian.PutUint64(sqe[16:], uint64(uintptr(unsafe.Pointer(&name[0]))))
	binary.LittleEndian.PutUint32(sqe[28:], unix.O_RDONLY|unix.O_CLOEXEC)
	binary.LittleEndian.PutUint64(sqe[32:], 42)

	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&rings[off])) }
	mask := *u32(p.SqOff.RingMask)
	tail := atomic.LoadUint32(u32(p.SqOff.Tail))
	*(*uint32)(unsafe.Pointer(&rings[p.SqOff.Array+(tail&mask)*4])) = 0
	atomic.StoreUint32(u32(p.SqOff.Tail), tail+1)
	if _, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, ring, 1, 1, 1 /* IORING_ENTER_GETEVENTS */, 0, 0); errno != 0 {
		return -1, fmt.Errorf("io_uring_enter: %w", errno)
	}
	runtime.KeepAlive(name)
	head := atomic.LoadUint32(u32(p.CqOff.Head))
	if atomic.LoadUint32(u32(p.CqOff.Tail)) == head {
		return -1, errors.New("no completion")
	}
	cqe := rings[p.CqOff.Cqes+(head&*u32(p.CqOff.RingMask))*16:]
	res := int32(binary.LittleEndian.Uint32(cqe[8:]))
	atomic.StoreUint32(u32(p.CqOff.Head), head+1)
	if res < 0 {
		return -1, fmt.Errorf("openat via io_uring: %w", syscall.Errno(-res))
	}
	return int(res), nil
}

// TestMain lets the test binary act as an io_uring reader in a child process.
func TestMain(m *testing.M) {
	if path := os.Getenv("SIDEKEY_TEST_IOURING_READ"); path != "" {
		fd, err := ioUringOpenat(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		buf := make([]byte, 64)
		n, _ := unix.Read(fd, buf)
		os.Stdout.Write(buf[:n])
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestIOUringOpenIsCaught(t *testing.T) {
	h := start(t, bpf.Options{})
	dir := probetest.MountTmpfs(t)
	audit := probetest.MountTmpfs(t)
	for _, d := range []string{dir, audit} {
		probetest.WriteFile(t, filepath.Join(d, "uring-token"), "s3cr3t")
	}
	h.watch(t, audit, false)
	h.watch(t, dir, true)
	if _, err := ioUringOpenat("/nonexistent-probe-check"); err != nil && errors.Is(err, unix.ENOSYS) {
		t.Skip("io_uring disabled on this kernel")
	}

	// Audit: this process opens through io_uring and gets an alert.
	fd, err := ioUringOpenat(filepath.Join(audit, "uring-token"))
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	deadline := time.After(10 * time.Second)
	for found := false; !found; {
		select {
		case ev := <-h.events:
			found = ev.File == "/uring-token" && ev.PID == uint32(os.Getpid()) && ev.Verdict == bpf.VerdictAlert
		case <-deadline:
			t.Fatal("no event for an io_uring open")
		}
	}

	// Enforce: a child opening through io_uring is killed before it reads.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), "SIDEKEY_TEST_IOURING_READ="+filepath.Join(dir, "uring-token"))
	out, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || out != nil && len(out) > 0 {
		t.Fatalf("io_uring reader in enforce mode: err %v, output %q; want killed, nothing read", err, out)
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("io_uring reader exit %v; want SIGKILL", ws)
	}
}
