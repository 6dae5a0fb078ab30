package vault

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	vapi "github.com/hashicorp/vault/api"

	"github.com/sidekey/sidekey/injector/agent"
	"github.com/sidekey/sidekey/injector/agent/agenttest"
	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/testenv"
)

func TestKVDataPath(t *testing.T) {
	tests := []struct {
		path, mount, want string
	}{
		{"secret/app", "secret/", "secret/data/app"},
		{"secret/data/app", "secret/", "secret/data/app"},
		{"secret/team/app", "secret/", "secret/data/team/app"},
		{"secret/database/app", "secret/", "secret/data/database/app"},
		{"secret", "secret/", "secret/data"},
		{"kv/nested/mount/app", "kv/nested/mount/", "kv/nested/mount/data/app"},
		{"secret/app", "ns1/secret/", "secret/data/app"}, // the mount names a namespace the path does not
	}
	for _, tt := range tests {
		t.Run(tt.path+" in "+tt.mount, func(t *testing.T) {
			if got := kvDataPath(tt.path, tt.mount); got != tt.want {
				t.Errorf("kvDataPath(%q, %q) = %q; want %q", tt.path, tt.mount, got, tt.want)
			}
		})
	}
}

func FuzzKVDataPath(f *testing.F) {
	f.Add("secret/app", "secret/")
	f.Add("a/b/c", "x/a/")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, p, m string) {
		got := kvDataPath(p, m) // must not hang or panic
		if p != "" && m != "" && !strings.Contains(got, "data") && got != p {
			t.Errorf("kvDataPath(%q, %q) = %q: no data/ inserted", p, m, got)
		}
	})
}

func TestParseMount(t *testing.T) {
	tests := []struct {
		name string
		data map[string]any
		want mount
	}{
		{"kv v2", map[string]any{"path": "secret/", "type": "kv", "options": map[string]any{"version": "2"}}, mount{"secret/", 2}},
		{"kv v1", map[string]any{"path": "kv/", "type": "kv", "options": map[string]any{"version": "1"}}, mount{"kv/", 1}},
		{"no options (other engine)", map[string]any{"path": "database/", "type": "database"}, mount{"database/", 1}},
		{"null options", map[string]any{"path": "pki/", "options": nil}, mount{"pki/", 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, parseMount(tt.data), cmp.AllowUnexported(mount{})); diff != "" {
				t.Errorf("parseMount (-want +got):\n%s", diff)
			}
		})
	}
}

// rootClient is a root-token client of the dev server, for setting up the test.
func rootClient(t *testing.T, v *testenv.Vault) *vapi.Client {
	t.Helper()
	cfg := vapi.DefaultConfig()
	cfg.Address = v.Addr
	c, err := vapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(v.Token)
	return c
}

func mustWrite(t *testing.T, c *vapi.Client, path string, data map[string]any) *vapi.Secret {
	t.Helper()
	s, err := c.Logical().Write(path, data)
	if err != nil {
		t.Fatalf("vault write %s: %v", path, err)
	}
	return s
}

var src = agenttest.Source

// harness is an agent on a tmpfs with a settable clock and a captured log.
type harness struct {
	dir   string
	agent *agent.Agent
	clock *agenttest.Clock
	logs  *agenttest.LockedBuffer
}

func newHarness(t *testing.T, vc spec.Vault, token string, secrets []spec.Secret, realClock bool) *harness {
	t.Helper()
	h := &harness{dir: agenttest.MountTmpfs(t), clock: &agenttest.Clock{T: time.Now()}, logs: &agenttest.LockedBuffer{}}
	// The backend follows real time (Vault enforces TTLs in real time); the agent's refresh
	// schedule follows the test's clock unless realClock.
	now := h.clock.Now
	if realClock {
		now = time.Now
	}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := &spec.Spec{Version: spec.Version, MountPath: h.dir, Mode: spec.ModeSidecar, Refresh: spec.Duration(time.Minute), Vault: &vc, Secrets: secrets}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := New(vc, Options{Logger: log, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	w, err := agent.NewWriter(h.dir, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	h.agent, err = agent.New(s, map[string]agent.Backend{spec.BackendVault: b}, agent.Options{Logger: log, Writer: w, Now: now,
		Backoff: agent.Backoff{Base: 100 * time.Millisecond, Max: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", h.logs.String())
		}
	})
	return h
}

func (h *harness) read(t *testing.T, like map[string]string) map[string]string {
	return agenttest.ReadFiles(h.dir, like)
}

// TestKVVersions reads KV v1 and v2 secrets from a real Vault, without the spec saying which
// engine version each mount runs.
func TestKVVersions(t *testing.T) {
	v := testenv.StartVault(t)
	c := rootClient(t, v)
	if err := c.Sys().Mount("kv1", &vapi.MountInput{Type: "kv", Options: map[string]string{"version": "1"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Sys().Mount("team/kv2", &vapi.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, "kv1/app", map[string]any{"user": "u1", "password": "p1"})
	mustWrite(t, c, "team/kv2/data/app", map[string]any{"data": map[string]any{"user": "u2", "password": "p2<&>", "port": 5432}})

	h := newHarness(t, spec.Vault{Addr: v.Addr}, v.Token, []spec.Secret{
		{Name: "v1-password", File: "v1/password", Mode: 0o400, Source: src("vault:kv1/app#password")},
		{Name: "v1-all", File: "v1/all.json", Mode: 0o400, Source: src("vault:kv1/app")},
		{Name: "v2-password", File: "v2/password", Mode: 0o400, Source: src("vault:team/kv2/app#password")},
		{Name: "v2-explicit-data", File: "v2/user", Mode: 0o400, Source: src("vault:team/kv2/data/app#user")},
		{Name: "v2-port", File: "v2/port", Mode: 0o400, Source: src("vault:team/kv2/app#port")},
		{Name: "v2-all", File: "v2/all.json", Mode: 0o400, Source: src("vault:team/kv2/app")},
		{Name: "tmpl", File: "dsn", Mode: 0o400, Template: `{{ with secret "vault:team/kv2/app" }}{{ .user }}:{{ .password | urlquery }}{{ end }}@{{ secret "vault:kv1/app#user" }}`,
			Sources: []spec.Source{*src("vault:team/kv2/app"), *src("vault:kv1/app#user")}},
	}, false)
	if err := h.agent.Sync(t.Context()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	want := map[string]string{
		"v1/password": "p1",
		"v1/all.json": `{"password":"p1","user":"u1"}`,
		"v2/password": "p2<&>",
		"v2/user":     "u2",
		"v2/port":     "5432",
		"v2/all.json": `{"password":"p2<&>","port":5432,"user":"u2"}`,
		"dsn":         "u2:p2%3C%26%3E@u1",
	}
	if diff := cmp.Diff(want, h.read(t, want)); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}

	mustWrite(t, c, "team/kv2/data/app", map[string]any{"data": map[string]any{"user": "u2", "password": "rotated", "port": 5432}})
	h.clock.Add(2 * time.Minute)
	if err := h.agent.Sync(t.Context()); err != nil {
		t.Fatalf("Sync after rotation: %v", err)
	}
	want["v2/password"] = "rotated"
	want["v2/all.json"] = `{"password":"rotated","port":5432,"user":"u2"}`
	want["dsn"] = "u2:rotated@u1"
	if diff := cmp.Diff(want, h.read(t, want)); diff != "" {
		t.Errorf("files after rotation (-want +got):\n%s", diff)
	}
	if n := h.agent.Metrics().Renders("v1-password"); n != 1 {
		t.Errorf("unchanged v1-password written %v times; want 1", n)
	}
	for _, secret := range []string{"p1", "p2", "rotated", "u2:"} {
		if strings.Contains(h.logs.String(), secret) {
			t.Errorf("the log contains the secret value %q", secret)
		}
	}
}

func TestErrorsNameTheSecret(t *testing.T) {
	v := testenv.StartVault(t)
	c := rootClient(t, v)
	mustWrite(t, c, "secret/data/app", map[string]any{"data": map[string]any{"password": "hunter2-value"}})
	h := newHarness(t, spec.Vault{Addr: v.Addr}, v.Token, []spec.Secret{
		{Name: "good", File: "good", Mode: 0o400, Source: src("vault:secret/app#password")},
		{Name: "missing-key", File: "k", Mode: 0o400, Source: src("vault:secret/app#nope")},
		{Name: "missing-path", File: "p", Mode: 0o400, Source: src("vault:secret/absent")},
	}, false)
	err := h.agent.Sync(t.Context())
	if err == nil {
		t.Fatal("Sync succeeded; want errors for missing-key and missing-path")
	}
	msg := err.Error()
	for _, want := range []string{`secret "missing-key"`, `key "nope" not found`, `secret "missing-path"`, "no secret at secret/data/absent"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, "hunter2-value") || strings.Contains(h.logs.String(), "hunter2-value") {
		t.Errorf("the error or log contains the secret value")
	}
	if b, _ := os.ReadFile(filepath.Join(h.dir, "good")); string(b) != "hunter2-value" {
		t.Errorf("good secret = %q; the failing ones must not block it", b)
	}
	if h.agent.Ready() {
		t.Errorf("Ready() = true with failing secrets")
	}
}

// TestVaultOutage stops Vault after the first render: files stay as they were while it is
// down, errors are counted, and the agent picks up the new value once Vault is back.
func TestVaultOutage(t *testing.T) {
	v := testenv.StartVault(t)
	mustWrite(t, rootClient(t, v), "secret/data/app", map[string]any{"data": map[string]any{"password": "before"}})
	h := newHarness(t, spec.Vault{Addr: v.Addr}, v.Token, []spec.Secret{
		{Name: "db", File: "db/password", Mode: 0o400, Source: src("vault:secret/app#password")},
	}, false)
	if err := h.agent.Sync(t.Context()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	p := filepath.Join(h.dir, "db/password")
	fi0, _ := os.Stat(p)

	v.Stop()
	for i := range 3 {
		h.clock.Add(5 * time.Minute)
		if err := h.agent.Sync(t.Context()); err == nil {
			t.Fatalf("Sync %d with Vault down succeeded", i)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != "before" {
			t.Fatalf("during the outage the file is %q, %v; want the last good value", b, err)
		}
	}
	if fi, _ := os.Stat(p); !fi.ModTime().Equal(fi0.ModTime()) {
		t.Errorf("the file was rewritten during the outage")
	}
	if n := h.agent.Metrics().FetchErrors(spec.BackendVault); n != 3 {
		t.Errorf("fetch errors = %v; want 3", n)
	}
	if !strings.Contains(h.logs.String(), "keeping the last good file") {
		t.Errorf("the outage was not logged")
	}

	v.Restart(t) // fresh dev state: write the secret again, rotated meanwhile
	mustWrite(t, rootClient(t, v), "secret/data/app", map[string]any{"data": map[string]any{"password": "after"}})
	h.clock.Add(5 * time.Minute)
	if err := h.agent.Sync(t.Context()); err != nil {
		t.Fatalf("Sync after Vault came back: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "after" {
		t.Errorf("after recovery the file is %q; want after", b)
	}
	if !strings.Contains(h.logs.String(), "fetch recovered") {
		t.Errorf("the recovery was not logged")
	}
}
