package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vapi "github.com/hashicorp/vault/api"

	"github.com/sidekey/sidekey/injector/agent/agenttest"
	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/testenv"
)

func specJSON(t *testing.T, s spec.Spec) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var mustSource = agenttest.Source

func TestFlagsAndConfig(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		wantErr  string
	}{
		{"version", []string{"--version"}, nil, 0, ""},
		{"bad log format", []string{"--log-format", "xml"}, nil, 2, `log-format "xml"`},
		{"bad init timeout from env", nil, map[string]string{"SIDEKEY_INIT_TIMEOUT": "0s"}, 2, "init-timeout"},
		{"empty spec", []string{"--once"}, map[string]string{spec.EnvVar: ""}, 1, "no spec: set SIDEKEY_SPEC_JSON"},
		{"spec file missing", []string{"--spec", "/nonexistent.json"}, nil, 1, "read spec"},
		{"not ready: nothing listening", []string{"--check-ready", "--health-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}, nil, 1, "connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var out, errb agenttest.LockedBuffer
			code := run(t.Context(), tt.args, &out, &errb)
			if code != tt.wantCode || !strings.Contains(errb.String(), tt.wantErr) {
				t.Errorf("run(%q) = %d, stderr %q; want %d and %q", tt.args, code, errb.String(), tt.wantCode, tt.wantErr)
			}
		})
	}
}

func TestRefusesDisk(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(spec.EnvVar, specJSON(t, spec.Spec{Version: spec.Version, MountPath: dir, Mode: spec.ModeInitOnly,
		Vault: &spec.Vault{Addr: "http://127.0.0.1:1"}, Secrets: []spec.Secret{{Name: "a", File: "a", Mode: 0o400, Source: mustSource("vault:secret/a")}}}))
	t.Setenv("VAULT_TOKEN", "x")
	var out, errb agenttest.LockedBuffer
	if code := run(t.Context(), []string{"--once"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "not a memory file system") || !strings.Contains(errb.String(), "--allow-disk") {
		t.Errorf("run --once on a disk dir = %d, %q; want 1 and a refusal naming --allow-disk", code, errb.String())
	}
}

// TestInitAndSidecar runs the command against a real Vault: --once writes the files and
// exits 0; --once with a missing secret gives up after --init-timeout naming it; the sidecar
// serves /readyz only after the first render, --check-ready agrees, and SIGTERM (ctx) stops it.
func TestInitAndSidecar(t *testing.T) {
	v := testenv.StartVault(t)
	vc := vapi.DefaultConfig()
	vc.Address = v.Addr
	c, _ := vapi.NewClient(vc)
	c.SetToken(v.Token)
	if _, err := c.Logical().Write("secret/data/app", map[string]any{"data": map[string]any{"password": "pw-init"}}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_TOKEN", v.Token)
	dir := agenttest.MountTmpfs(t)
	health := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	base := spec.Spec{Version: spec.Version, MountPath: dir, Mode: spec.ModeSidecar, Refresh: spec.Duration(time.Hour),
		Vault: &spec.Vault{Addr: v.Addr}, HealthAddr: health,
		Secrets: []spec.Secret{{Name: "db", File: "db/password", Mode: 0o400, Source: mustSource("vault:secret/app#password")}}}

	t.Run("once", func(t *testing.T) {
		t.Setenv(spec.EnvVar, specJSON(t, base))
		var out, errb agenttest.LockedBuffer
		if code := run(t.Context(), []string{"--once"}, &out, &errb); code != 0 {
			t.Fatalf("run --once = %d; stderr:\n%s", code, errb.String())
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "db/password")); string(b) != "pw-init" {
			t.Errorf("file = %q; want pw-init", b)
		}
	})

	t.Run("once gives up naming the secret", func(t *testing.T) {
		s := base
		s.Secrets = append(s.Secrets, spec.Secret{Name: "missing", File: "missing", Mode: 0o400, Source: mustSource("vault:secret/absent#x")})
		t.Setenv(spec.EnvVar, specJSON(t, s))
		var out, errb agenttest.LockedBuffer
		code := run(t.Context(), []string{"--once", "--init-timeout", "1500ms"}, &out, &errb)
		msg := errb.String()
		if code != 1 || !strings.Contains(msg, `secret "missing"`) || !strings.Contains(msg, "gave up after 1.5s") {
			t.Errorf("run --once = %d, stderr:\n%s\nwant 1 naming secret \"missing\"", code, msg)
		}
		if strings.Contains(msg, "pw-init") {
			t.Errorf("the error output contains a secret value")
		}
	})

	t.Run("sidecar", func(t *testing.T) {
		os.RemoveAll(filepath.Join(dir, "db"))
		t.Setenv(spec.EnvVar, specJSON(t, base))
		ctx, cancel := context.WithCancel(t.Context())
		var out, errb agenttest.LockedBuffer
		done := make(chan int, 1)
		go func() { done <- run(ctx, []string{"--log-format", "json"}, &out, &errb) }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var o, e agenttest.LockedBuffer
			if run(t.Context(), []string{"--check-ready"}, &o, &e) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("--check-ready never passed; agent log:\n%s", errb.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		// Ready implies the file is there.
		if b, _ := os.ReadFile(filepath.Join(dir, "db/password")); string(b) != "pw-init" {
			t.Errorf("ready but file = %q", b)
		}
		resp, err := http.Get("http://" + health + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{`sidekey_agent_renders_total{secret="db"} 1`, "sidekey_agent_ready 1", `sidekey_agent_last_success_timestamp_seconds{secret="db"}`} {
			if !strings.Contains(string(metrics), want) {
				t.Errorf("/metrics lacks %q:\n%s", want, metrics)
			}
		}
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("sidecar exited %d after SIGTERM; log:\n%s", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("sidecar did not stop after SIGTERM")
		}
		for _, line := range strings.Split(strings.TrimSpace(errb.String()), "\n") {
			if !json.Valid([]byte(line)) {
				t.Errorf("log line is not JSON: %s", line)
			}
		}
		if strings.Contains(errb.String(), "pw-init") {
			t.Errorf("the log contains a secret value or the token")
		}
	})
}
