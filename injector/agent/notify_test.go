package agent

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sidekey/sidekey/injector/spec"
)

func TestNewNotifierRefuses(t *testing.T) {
	tests := []struct {
		name string
		oc   spec.OnChange
		want string
	}{
		{"remote url", spec.OnChange{Kind: spec.OnChangeHTTP, URL: "http://example.com/reload"}, "localhost"},
		{"bad scheme", spec.OnChange{Kind: spec.OnChangeHTTP, URL: "file:///x"}, "localhost"},
		{"bad signal", spec.OnChange{Kind: spec.OnChangeSignal, Container: "app", Signal: "SIGNOPE"}, "unknown signal"},
		{"bad kind", spec.OnChange{Kind: "email"}, "want none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewNotifier(tt.oc)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewNotifier(%+v) = %v; want an error mentioning %q", tt.oc, err, tt.want)
			}
		})
	}
}

func TestHTTPNotifier(t *testing.T) {
	got := make(chan []string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ Changed []string }
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || json.Unmarshal(b, &body) != nil {
			http.Error(w, "bad", 400)
			return
		}
		got <- body.Changed
	}))
	defer srv.Close()
	n, err := NewNotifier(spec.OnChange{Kind: spec.OnChangeHTTP, URL: srv.URL + "/-/reload"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(context.Background(), []string{"db", "api"}); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if diff := cmp.Diff([]string{"db", "api"}, <-got); diff != "" {
		t.Errorf("posted names (-want +got):\n%s", diff)
	}
}

func TestTouchNotifier(t *testing.T) {
	p := filepath.Join(t.TempDir(), "reload")
	n, err := NewNotifier(spec.OnChange{Kind: spec.OnChangeTouch, Path: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(context.Background(), nil); err != nil {
		t.Fatalf("Notify (create): %v", err)
	}
	old := time.Now().Add(-time.Hour)
	os.Chtimes(p, old, old)
	if err := n.Notify(context.Background(), nil); err != nil {
		t.Fatalf("Notify (touch): %v", err)
	}
	fi, _ := os.Stat(p)
	if time.Since(fi.ModTime()) > time.Minute {
		t.Errorf("mtime %v not updated", fi.ModTime())
	}
}

// TestSignalNotifier starts a real "app container" process tree (a shell that traps SIGHUP,
// with a child) carrying SIDEKEY_CONTAINER=app, and a decoy for another container; only the
// app's top process gets the signal.
func TestSignalNotifier(t *testing.T) {
	dir := t.TempDir()
	start := func(container, mark string) *exec.Cmd {
		cmd := exec.Command("sh", "-c", `trap 'echo hup > `+mark+`' HUP; sleep 60 & while :; do sleep 0.05; done`)
		cmd.Env = append(os.Environ(), spec.ContainerEnv+"="+container)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	app := start("app", filepath.Join(dir, "app"))
	start("other", filepath.Join(dir, "other"))
	n, err := NewNotifier(spec.OnChange{Kind: spec.OnChangeSignal, Container: "app", Signal: "SIGHUP"})
	if err != nil {
		t.Fatal(err)
	}
	sn := n.(*SignalNotifier)
	var pids []int
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) { // the shell's children appear a moment after start
		if pids, err = sn.Find(); err == nil && len(pids) == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if diff := cmp.Diff([]int{app.Process.Pid}, pids); diff != "" {
		t.Fatalf("Find() (-want +got):\n%s", diff)
	}
	if err := n.Notify(context.Background(), []string{"db"}); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(dir, "app")); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(dir, "app")); err != nil {
		t.Errorf("the app's process did not get SIGHUP")
	}
	if _, err := os.Stat(filepath.Join(dir, "other")); err == nil {
		t.Errorf("the other container's process got the signal")
	}

	none := &SignalNotifier{Container: "missing", Signal: sn.Signal, Proc: "/proc"}
	if err := none.Notify(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "shareProcessNamespace") {
		t.Errorf("Notify for a missing container = %v; want an error explaining shareProcessNamespace", err)
	}
}

func FuzzParsePPID(f *testing.F) {
	f.Add([]byte("42 (sh) S 7 42 42 0 -1"))
	f.Add([]byte("42 (a) b) (c) R 9 1"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p := parsePPID(b); p < 0 && !strings.Contains(string(b), "-") {
			t.Errorf("parsePPID(%q) = %d", b, p)
		}
	})
}

func TestParsePPID(t *testing.T) {
	for in, want := range map[string]int{
		"42 (sh) S 7 42 42 0 -1":      7,
		"42 (a) b) (c) R 9 1":         9,
		"42 (no close paren S 7 42 4": 0,
		"":                            0,
	} {
		if got := parsePPID([]byte(in)); got != want {
			t.Errorf("parsePPID(%q) = %d; want %d", in, got, want)
		}
	}
}
