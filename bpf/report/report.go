// Package report turns probe events into output records (one JSON object per line, or
// text) and exposes the probe's counters as Prometheus metrics.
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sidekey/sidekey/bpf"
	"github.com/sidekey/sidekey/bpf/policy"
)

// Record is one line of `sidekey probe` output.
type Record struct {
	Time    time.Time `json:"time"`
	Verdict string    `json:"verdict"` // alert or deny
	PID     uint32    `json:"pid"`
	TID     uint32    `json:"tid"`
	UID     uint32    `json:"uid"`
	GID     uint32    `json:"gid"`
	Comm    string    `json:"comm"`
	Exe     string    `json:"exe"` // as the reader sees it (inside its container)
	// Path is the file as seen from the watched mount: the watched directory joined with
	// the file's path inside the tmpfs.
	Path      string `json:"path"`
	CgroupID  uint64 `json:"cgroup_id"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Container string `json:"container,omitempty"`
	// Suppressed counts earlier flagged opens of the same (reader, file) that were
	// rate-limited into this record.
	Suppressed uint64 `json:"suppressed,omitempty"`
	Attach     string `json:"attach"`           // lsm or tracepoint
	Device     string `json:"device"`           // the tmpfs, major:minor
	Inode      uint64 `json:"inode"`            // the file's inode
	ExeID      string `json:"exe_id,omitempty"` // the executable's major:minor:inode
	Truncated  bool   `json:"truncated,omitempty"`
}

// NewRecord builds the record for ev, which hit watch w (zero when unknown), read by
// a process of container (empty when unknown).
func NewRecord(ev bpf.Event, w policy.Watch, container string) Record {
	path := ev.File
	if w.Dir != "" {
		path = filepath.Join(w.Dir, ev.File)
	}
	r := Record{
		Time: ev.Time.UTC(), Verdict: string(ev.Verdict), PID: ev.PID, TID: ev.TID, UID: ev.UID, GID: ev.GID,
		Comm: ev.Comm, Exe: ev.Exe, Path: path, CgroupID: ev.CgroupID,
		Namespace: w.Namespace, Pod: w.Pod, Container: container,
		Suppressed: ev.Suppressed, Attach: string(ev.Mode),
		Device: bpf.FormatDev(ev.FileID.Dev), Inode: ev.FileID.Ino, Truncated: ev.Truncated,
	}
	if ev.ExeID != (bpf.FileID{}) {
		r.ExeID = ev.ExeID.String()
	}
	return r
}

// Formats of Writer.
const (
	FormatJSON = "json"
	FormatText = "text"
)

// Writer writes records, one per line. It is safe for concurrent use.
type Writer struct {
	mu   sync.Mutex
	w    io.Writer
	text bool
}

// NewWriter returns a Writer for format json or text.
func NewWriter(w io.Writer, format string) (*Writer, error) {
	switch format {
	case FormatJSON, "":
		return &Writer{w: w}, nil
	case FormatText:
		return &Writer{w: w, text: true}, nil
	}
	return nil, fmt.Errorf("output format %q: want json or text", format)
}

// Write writes one record.
func (w *Writer) Write(r Record) error {
	var line []byte
	if w.text {
		line = []byte(Text(r) + "\n")
	} else {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode record: %w", err)
		}
		line = append(b, '\n')
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.w.Write(line); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

// Text renders a record on one human-readable line.
func Text(r Record) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s %s path=%q exe=%q comm=%q pid=%d uid=%d cgroup=%d",
		r.Time.Format(time.RFC3339Nano), strings.ToUpper(r.Verdict), r.Path, r.Exe, r.Comm, r.PID, r.UID, r.CgroupID)
	if r.Pod != "" {
		fmt.Fprintf(&sb, " pod=%s/%s", r.Namespace, r.Pod)
	}
	if r.Container != "" {
		fmt.Fprintf(&sb, " container=%s", r.Container)
	}
	if r.Suppressed > 0 {
		fmt.Fprintf(&sb, " suppressed=%d", r.Suppressed)
	}
	return sb.String()
}

// Source delivers probe events; *bpf.Probe implements it.
type Source interface {
	Read() (bpf.Event, error)
}

// Enricher names the watch an event hit and the reader's container ("" when unknown).
type Enricher func(ev bpf.Event) (w policy.Watch, container string)

// Pump reads events from src until it is closed (bpf.ErrClosed, then Pump returns nil),
// turns each into a Record and hands it to out. Malformed records are logged and skipped.
func Pump(src Source, enrich Enricher, out func(Record, policy.Watch), log *slog.Logger) error {
	for {
		ev, err := src.Read()
		if errors.Is(err, bpf.ErrClosed) {
			return nil
		}
		if errors.Is(err, bpf.ErrMalformed) {
			log.Error("skipping malformed probe event", "err", err)
			continue
		}
		if err != nil {
			return err
		}
		w, container := enrich(ev)
		out(NewRecord(ev, w, container), w)
	}
}
