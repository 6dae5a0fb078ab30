package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func comp(s string) (c [64]int8) {
	for i := 0; i < len(s) && i < 63; i++ {
		c[i] = int8(s[i])
	}
	return c
}

func encode(t testing.TB, raw probeEvent) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, raw); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodeEvent(t *testing.T) {
	full := probeEvent{
		BootNs: 42, CgroupId: 7, FileIno: 15, ExeIno: 99, Suppressed: 3,
		Pid: 100, Tid: 101, Uid: 1000, Gid: 1001, FileDev: 39, ExeDev: 254 << 20, WatchId: 2,
		OpenFlags: 0o100000, Verdict: 2, Mode: 1, FileDepth: 2, ExeDepth: 3,
	}
	copy(full.Comm[:], []int8{'c', 'a', 't'})
	full.File[0], full.File[1] = comp("token"), comp("sub")
	full.Exe[0], full.Exe[1], full.Exe[2] = comp("cat"), comp("bin"), comp("usr")

	kernelThread := full
	kernelThread.ExeDepth, kernelThread.ExeDev, kernelThread.ExeIno = 0, 0, 0
	kernelThread.Truncated = 1
	kernelThread.Verdict = 1
	kernelThread.Mode = 2

	tests := []struct {
		name    string
		raw     probeEvent
		extra   int
		want    Event
		wantErr bool
	}{
		{"deny by tracepoint", full, 0, Event{
			BootNs: 42, Verdict: VerdictDeny, Mode: ModeTracepoint, PID: 100, TID: 101, UID: 1000, GID: 1001,
			Comm: "cat", Exe: "/usr/bin/cat", ExeID: FileID{Dev: 254 << 20, Ino: 99}, File: "/sub/token",
			FileID: FileID{Dev: 39, Ino: 15}, CgroupID: 7, WatchID: 2, OpenFlags: 0o100000, Suppressed: 3,
		}, false},
		{"trailing bytes are ignored", full, 8, Event{
			BootNs: 42, Verdict: VerdictDeny, Mode: ModeTracepoint, PID: 100, TID: 101, UID: 1000, GID: 1001,
			Comm: "cat", Exe: "/usr/bin/cat", ExeID: FileID{Dev: 254 << 20, Ino: 99}, File: "/sub/token",
			FileID: FileID{Dev: 39, Ino: 15}, CgroupID: 7, WatchID: 2, OpenFlags: 0o100000, Suppressed: 3,
		}, false},
		{"no executable, truncated, lsm", kernelThread, 0, Event{
			BootNs: 42, Verdict: VerdictAlert, Mode: ModeLSM, PID: 100, TID: 101, UID: 1000, GID: 1001,
			Comm: "cat", File: "/sub/token", FileID: FileID{Dev: 39, Ino: 15}, CgroupID: 7, WatchID: 2,
			OpenFlags: 0o100000, Suppressed: 3, Truncated: true,
		}, false},
		{"bad verdict", func() probeEvent { r := full; r.Verdict = 9; return r }(), 0, Event{}, true},
		{"bad mode", func() probeEvent { r := full; r.Mode = 0; return r }(), 0, Event{}, true},
		{"depth out of range", func() probeEvent { r := full; r.ExeDepth = 17; return r }(), 0, Event{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := append(encode(t, tt.raw), make([]byte, tt.extra)...)
			got, err := DecodeEvent(b)
			if (err != nil) != tt.wantErr {
				t.Fatalf("DecodeEvent() error = %v, wantErr %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("DecodeEvent() mismatch (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := DecodeEvent(make([]byte, EventSize-1)); !errors.Is(err, ErrShortEvent) {
		t.Errorf("DecodeEvent(short) = %v; want ErrShortEvent", err)
	}
}

func FuzzDecodeEvent(f *testing.F) {
	raw := probeEvent{Verdict: 1, Mode: 1, FileDepth: 1, ExeDepth: 1}
	raw.File[0], raw.Exe[0] = comp("token"), comp("cat")
	f.Add(encode(f, raw))
	f.Add([]byte{})
	f.Add(make([]byte, EventSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := DecodeEvent(b)
		if err != nil {
			return
		}
		if ev.Verdict != VerdictAlert && ev.Verdict != VerdictDeny {
			t.Fatalf("verdict %q", ev.Verdict)
		}
		if len(ev.File) == 0 || ev.File[0] != '/' {
			t.Fatalf("file %q is not absolute", ev.File)
		}
	})
}

func TestKernelDev(t *testing.T) {
	tests := []struct {
		stDev uint64
		want  uint32
	}{
		{0x0027, 39},          // 0:39, a tmpfs
		{0xfe01, 254<<20 | 1}, // 254:1
		{unix.Mkdev(254, 0x1001), 254<<20 | 0x1001}, // minor above 255
	}
	for _, tt := range tests {
		if got := KernelDev(tt.stDev); got != tt.want {
			t.Errorf("KernelDev(%#x) = %#x; want %#x", tt.stDev, got, tt.want)
		}
	}
}
