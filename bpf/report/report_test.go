package report

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidekey/sidekey/bpf"
	"github.com/sidekey/sidekey/bpf/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

var event = bpf.Event{
	Time: time.Date(2026, 11, 23, 1, 2, 3, 4000, time.UTC), Verdict: bpf.VerdictDeny, Mode: bpf.ModeTracepoint,
	PID: 4242, TID: 4243, UID: 1000, GID: 1000, Comm: "cat", Exe: "/usr/bin/cat",
	ExeID: bpf.FileID{Dev: 0x30, Ino: 77}, File: "/db/password", FileID: bpf.FileID{Dev: 254<<20 | 3, Ino: 5},
	CgroupID: 9, WatchID: 1, Suppressed: 2,
}

func TestWriter(t *testing.T) {
	pod := policy.Watch{Dir: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/sidekey-secrets", Namespace: "shop", Pod: "api-0"}
	for _, format := range []string{FormatJSON, FormatText} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewWriter(&buf, format)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range []Record{
				NewRecord(event, pod, "debug"),
				NewRecord(event, policy.Watch{Dir: "/run/secrets"}, ""),
				NewRecord(bpf.Event{Time: event.Time, Verdict: bpf.VerdictAlert, Mode: bpf.ModeLSM, File: "/x"}, policy.Watch{}, ""),
			} {
				if err := w.Write(r); err != nil {
					t.Fatal(err)
				}
			}
			golden(t, "records."+format, buf.Bytes())
		})
	}
	if _, err := NewWriter(&bytes.Buffer{}, "yaml"); err == nil {
		t.Error(`NewWriter("yaml") = nil error`)
	}
}

type fixedCounters bpf.Counters

func (f fixedCounters) Counters() (bpf.Counters, error) { return bpf.Counters(f), nil }

func TestCollector(t *testing.T) {
	c := NewCollector(fixedCounters{Watched: 10, Allowed: 6, Flagged: 4, Denied: 1, RateLimited: 2, Dropped: 1, DroppedPerCPU: []uint64{0, 1}},
		func() int { return 3 })
	c.Observe(Record{Verdict: "deny"})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.Counter != nil:
				got[name] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				got[name] = m.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{
		"sidekey_probe_watched_opens_total": 10, "sidekey_probe_allowed_opens_total": 6,
		"sidekey_probe_flagged_opens_total": 4, "sidekey_probe_denied_opens_total": 1,
		"sidekey_probe_rate_limited_total": 2, "sidekey_probe_dropped_events_total{cpu=0}": 0,
		"sidekey_probe_dropped_events_total{cpu=1}": 1, "sidekey_probe_events_total{verdict=deny}": 1,
		"sidekey_probe_watches": 3, "sidekey_probe_counters_up": 1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics mismatch (-want +got):\n%s", diff)
	}
}
