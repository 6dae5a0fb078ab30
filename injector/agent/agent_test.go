package agent

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sidekey/sidekey/injector/spec"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

func TestValue(t *testing.T) {
	kv := Document{Data: map[string]any{"user": "app", "port": json.Number("5432"), "tags": []any{"a", "b"}}}
	raw := Document{Raw: []byte("plain-value")}
	tests := []struct {
		name    string
		doc     Document
		key     string
		want    any
		wantErr string
	}{
		{"whole kv", kv, "", kv.Data, ""},
		{"string key", kv, "user", "app", ""},
		{"number key", kv, "port", "5432", ""},
		{"list key as JSON", kv, "tags", `["a","b"]`, ""},
		{"missing key names the keys, not values", kv, "password", nil, `key "password" not found (the secret has keys port, tags, user)`},
		{"whole raw", raw, "", "plain-value", ""},
		{"key of raw", raw, "x", nil, "not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := value(tt.doc, spec.Source{Backend: "vault", Path: "p", Key: tt.key})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("value() error = %v; want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "plain-value") || strings.Contains(err.Error(), "5432") {
					t.Errorf("error quotes a value: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("value() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Base: time.Second, Max: 10 * time.Second}
	for n, max := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 50: 10 * time.Second} {
		for range 20 {
			if d := b.Delay(n); d > max || d < max/2 {
				t.Errorf("Delay(%d) = %s; want in [%s, %s]", n, d, max/2, max)
			}
		}
	}
}

func TestMetricsText(t *testing.T) {
	m := NewMetrics()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m.now = func() time.Time { return at }
	m.renderInc("db")
	m.renderInc("db")
	m.renderInc("api")
	m.errorInc("api")
	m.fetchErrorInc("vault")
	m.success("db", at.Add(-time.Minute), at.Add(90*time.Second))
	m.success("api", at.Add(-2*time.Minute), time.Time{})
	m.setReady(true)
	var buf bytes.Buffer
	if err := m.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "metrics.golden")
	if *update {
		os.WriteFile(golden, buf.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), buf.String()); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}
