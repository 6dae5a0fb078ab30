package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"
	"unsafe"
)

// Verdict is what the probe did about a flagged open.
type Verdict string

// Verdicts.
const (
	VerdictAlert Verdict = "alert" // reported only
	VerdictDeny  Verdict = "deny"  // stopped: EPERM (lsm) or SIGKILL before the data is read (tracepoint)
)

// Event is one flagged open, decoded from the ring buffer.
type Event struct {
	Time     time.Time // wall time of the open (set by Probe.Read)
	BootNs   uint64    // CLOCK_BOOTTIME of the open
	Verdict  Verdict
	Mode     Mode   // the attach mode that saw it
	PID      uint32 // thread group id
	TID      uint32
	UID, GID uint32
	Comm     string // the task's comm: chosen by the process, never used to decide
	// Exe is the executable's path as the opener sees it (relative to its root, e.g.
	// inside its container); "" when the task has no executable (kernel thread).
	Exe   string
	ExeID FileID
	// File is the opened file's path from the root of its tmpfs ("/token"), whichever
	// name (hard link, bind mount, symlink, /proc/<pid>/root) the opener used.
	File      string
	FileID    FileID
	CgroupID  uint64
	WatchID   uint32
	OpenFlags uint32
	// Suppressed counts the flagged opens of the same (reader, file) not reported since
	// the previous event (rate limiting).
	Suppressed uint64
	// Truncated is set when a path was deeper than the probe records; its top
	// components are missing.
	Truncated bool
}

// EventSize is the size of one ring buffer record.
const EventSize = int(unsafe.Sizeof(probeEvent{}))

// ErrMalformed wraps every DecodeEvent error.
var ErrMalformed = errors.New("malformed event record")

// ErrShortEvent reports a ring buffer record smaller than an event.
var ErrShortEvent = fmt.Errorf("%w: short", ErrMalformed)

// DecodeEvent decodes one ring buffer record. It never panics on malformed input; it
// fails on records of the wrong size or with impossible field values.
func DecodeEvent(b []byte) (Event, error) {
	if len(b) < EventSize {
		return Event{}, fmt.Errorf("%w: %d bytes, want %d", ErrShortEvent, len(b), EventSize)
	}
	// The record is the C struct in host layout (the object is built for little-endian
	// hosts only); copying its bytes is binary.Decode without the reflection.
	var raw probeEvent
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&raw)), EventSize), b)
	ev := Event{
		BootNs:     raw.BootNs,
		PID:        raw.Pid,
		TID:        raw.Tid,
		UID:        raw.Uid,
		GID:        raw.Gid,
		Comm:       cString(raw.Comm[:]),
		ExeID:      FileID{Dev: raw.ExeDev, Ino: raw.ExeIno},
		FileID:     FileID{Dev: raw.FileDev, Ino: raw.FileIno},
		CgroupID:   raw.CgroupId,
		WatchID:    raw.WatchId,
		OpenFlags:  raw.OpenFlags,
		Suppressed: raw.Suppressed,
		Truncated:  raw.Truncated != 0,
	}
	switch raw.Verdict {
	case 1:
		ev.Verdict = VerdictAlert
	case 2:
		ev.Verdict = VerdictDeny
	default:
		return Event{}, fmt.Errorf("%w: verdict %d", ErrMalformed, raw.Verdict)
	}
	switch raw.Mode {
	case 1:
		ev.Mode = ModeTracepoint
	case 2:
		ev.Mode = ModeLSM
	case 3:
		ev.Mode = ModeScan
	default:
		return Event{}, fmt.Errorf("%w: attach mode %d", ErrMalformed, raw.Mode)
	}
	if int(raw.FileDepth) > len(raw.File) || int(raw.ExeDepth) > len(raw.Exe) {
		return Event{}, fmt.Errorf("%w: path depth %d/%d", ErrMalformed, raw.FileDepth, raw.ExeDepth)
	}
	ev.File = joinLeafFirst(raw.File[:raw.FileDepth])
	if raw.ExeDepth > 0 || raw.ExeDev != 0 {
		ev.Exe = joinLeafFirst(raw.Exe[:raw.ExeDepth])
	}
	return ev, nil
}

// joinLeafFirst builds "/a/b/c" from components recorded leaf first (c, b, a).
func joinLeafFirst(comps [][64]int8) string {
	var sb strings.Builder
	for i := len(comps) - 1; i >= 0; i-- {
		sb.WriteByte('/')
		sb.WriteString(cString(comps[i][:]))
	}
	if sb.Len() == 0 {
		return "/"
	}
	return sb.String()
}

// cString converts a NUL-terminated C char array; a missing NUL takes the whole array.
func cString(c []int8) string {
	b := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(c))), len(c))
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
