package vault

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vapi "github.com/hashicorp/vault/api"

	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/testenv"
)

// startRedis runs a real redis-server (Debian package redis-server) on a free loopback port
// with admin password adminpw, for Vault's database secrets engine to issue users in.
func startRedis(t *testing.T) int {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: the dynamic-secret test needs it (apt-get install redis-server): %v", err)
	}
	port := testenv.FreePort(t)
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--requirepass", "adminpw", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		if redisAuth(port, "default", "adminpw") == nil {
			return port
		}
		if i > 100 {
			t.Fatalf("redis-server on port %d not ready", port)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// redisAuth checks a user's password with the real server (RESP AUTH).
func redisAuth(port int, user, pass string) error {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(c, "*3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(user), user, len(pass), pass)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+OK") {
		return fmt.Errorf("redis AUTH %s: %s", user, strings.TrimSpace(line))
	}
	return nil
}

// TestDynamicSecretLeases uses Vault's database secrets engine with its built-in Redis plugin:
// real leased, renewable credentials for a real Redis. The agent renews the lease at about
// two thirds of its TTL (the credentials keep working past the TTL), fetches new credentials
// when the lease reaches its max TTL, and revokes its lease on shutdown.
func TestDynamicSecretLeases(t *testing.T) {
	port := startRedis(t)
	v := testenv.StartVault(t)
	c := rootClient(t, v)
	if err := c.Sys().Mount("database", &vapi.MountInput{Type: "database"}); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, "database/config/redis", map[string]any{
		"plugin_name": "redis-database-plugin", "host": "127.0.0.1", "port": port,
		"username": "default", "password": "adminpw", "allowed_roles": "*",
	})
	const ttl, maxTTL = 4 * time.Second, 12 * time.Second
	mustWrite(t, c, "database/roles/app", map[string]any{
		"db_name": "redis", "creation_statements": `["~*", "+@read"]`,
		"default_ttl": ttl.String(), "max_ttl": maxTTL.String(),
	})
	h := newHarness(t, spec.Vault{Addr: v.Addr, RevokeOnShutdown: true}, v.Token, []spec.Secret{{
		Name: "redis", File: "redis/creds", Mode: 0o400,
		Template: `{{ with secret "vault:database/creds/app" }}{{ .username }} {{ .password }}{{ end }}`,
		Sources:  []spec.Source{*src("vault:database/creds/app")},
	}}, true)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- h.agent.Run(ctx) }()
	defer func() { cancel(); <-done }()

	p := filepath.Join(h.dir, "redis/creds")
	creds := func() (string, string) {
		b, _ := os.ReadFile(p)
		u, pw, _ := strings.Cut(string(b), " ")
		return u, pw
	}
	waitFor(t, 10*time.Second, "first credentials", func() bool { u, _ := creds(); return u != "" })
	u1, p1 := creds()
	if err := redisAuth(port, u1, p1); err != nil {
		t.Fatalf("the issued credentials do not work: %v", err)
	}

	// Past the lease's first TTL: still the same credentials, still valid in Redis, because the
	// agent renewed the lease (Vault would have dropped the Redis user otherwise).
	time.Sleep(time.Until(start.Add(ttl + 2*time.Second)))
	if u, _ := creds(); u != u1 {
		t.Fatalf("credentials replaced at %s, before the max TTL; want the lease renewed", time.Since(start).Round(time.Millisecond))
	}
	if err := redisAuth(port, u1, p1); err != nil {
		t.Fatalf("after %s (TTL %s) the credentials no longer work: the lease was not renewed: %v", time.Since(start).Round(time.Millisecond), ttl, err)
	}
	if !strings.Contains(h.logs.String(), "renewed lease") {
		t.Errorf("no lease renewal logged")
	}

	// Near the max TTL the lease cannot be extended: the agent fetches new credentials.
	waitFor(t, maxTTL+2*time.Second, "new credentials at the max TTL", func() bool { u, _ := creds(); return u != "" && u != u1 })
	u2, p2 := creds()
	if err := redisAuth(port, u2, p2); err != nil {
		t.Fatalf("the new credentials do not work: %v", err)
	}
	waitFor(t, 5*time.Second, "Vault to revoke the first credentials at their max TTL", func() bool { return redisAuth(port, u1, p1) != nil })

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	done <- nil
	if err := redisAuth(port, u2, p2); err == nil {
		t.Errorf("the lease was not revoked on shutdown (revokeOnShutdown): the credentials still work")
	}
	for _, secret := range []string{p1, p2} {
		if strings.Contains(h.logs.String(), secret) {
			t.Errorf("the log contains a password")
		}
	}
}

// TestWriteParams reads a path that needs a write (PKI issue), with the parameters after "?",
// and shows a non-renewable lease being fetched anew at about two thirds of its TTL.
func TestWriteParams(t *testing.T) {
	v := testenv.StartVault(t)
	c := rootClient(t, v)
	if err := c.Sys().Mount("pki", &vapi.MountInput{Type: "pki", Config: vapi.MountConfigInput{MaxLeaseTTL: "1h"}}); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, "pki/root/generate/internal", map[string]any{"common_name": "test root", "ttl": "1h"})
	mustWrite(t, c, "pki/roles/web", map[string]any{
		"allowed_domains": "example.com", "allow_subdomains": true, "generate_lease": true, "ttl": "3s", "max_ttl": "1h",
	})
	b, err := New(spec.Vault{Addr: v.Addr}, Options{Token: v.Token})
	if err != nil {
		t.Fatal(err)
	}
	s := *src("vault:pki/issue/web?common_name=app.example.com")
	r1 := b.Fetch(t.Context(), []spec.Source{s})[0]
	if r1.Err != nil {
		t.Fatalf("Fetch: %v", r1.Err)
	}
	serial1, _ := r1.Doc.Data["serial_number"].(string)
	if serial1 == "" || r1.Doc.Refetch.IsZero() || time.Until(r1.Doc.Refetch) > 3*time.Second {
		t.Fatalf("first certificate: serial %q, refetch in %s; want a serial and a refetch within the 3s TTL", serial1, time.Until(r1.Doc.Refetch))
	}
	if r := b.Fetch(t.Context(), []spec.Source{s})[0]; r.Doc.Data["serial_number"] != serial1 {
		t.Errorf("before the refetch time a new certificate was issued")
	}
	time.Sleep(time.Until(r1.Doc.Refetch) + 10*time.Millisecond)
	r2 := b.Fetch(t.Context(), []spec.Source{s})[0]
	if r2.Err != nil || r2.Doc.Data["serial_number"] == serial1 {
		t.Errorf("after the refetch time: serial %v, %v; want a new certificate", r2.Doc.Data["serial_number"], r2.Err)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
