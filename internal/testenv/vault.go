package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Vault is a real `vault server -dev` on loopback.
type Vault struct {
	Addr  string // http://127.0.0.1:PORT
	Token string // the root token

	bin, dir, listen string
	mu               sync.Mutex
	cmd              *exec.Cmd
	exited           chan struct{} // closed when cmd has been waited for
	logPath          string
}

// StartVault starts a Vault dev server (in-memory storage, KV v2 at secret/, root token
// "root") on a free loopback port; it stops when the test ends.
func StartVault(t testing.TB) *Vault {
	t.Helper()
	v := &Vault{
		Token:  "root",
		bin:    Bin(t, "vault"),
		dir:    t.TempDir(),
		listen: fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
	}
	v.Addr = "http://" + v.listen
	v.start(t)
	t.Cleanup(v.Stop)
	return v
}

func (v *Vault) start(t testing.TB) {
	t.Helper()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.logPath = filepath.Join(v.dir, fmt.Sprintf("vault-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(v.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(v.bin, "server", "-dev", "-dev-root-token-id="+v.Token, "-dev-listen-address="+v.listen)
	// HOME points into the test's directory: a dev server writes the root token to ~/.vault-token.
	cmd.Env = append(os.Environ(), "HOME="+v.dir, "VAULT_ADDR="+v.Addr, "SKIP_SETCAP=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: start vault: %v", err)
	}
	v.cmd = cmd
	done := make(chan struct{})
	v.exited = done
	go func() { _ = cmd.Wait(); close(done) }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, v.Addr+"/v1/sys/health", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-done:
			t.Fatalf("testenv: vault exited at start:\n%s", Tail(v.logPath, 30))
		case <-ctx.Done():
			t.Fatalf("testenv: vault not ready after 30s:\n%s", Tail(v.logPath, 30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop stops the server; the address stays reserved for Restart. Stopping twice is harmless.
func (v *Vault) Stop() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cmd == nil {
		return
	}
	_ = v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.exited:
	case <-time.After(10 * time.Second):
		_ = v.cmd.Process.Kill()
		<-v.exited
	}
	v.cmd = nil
}

// Restart starts a fresh dev server on the same address (dev storage is in memory, so the
// test writes its secrets again), as after an outage.
func (v *Vault) Restart(t testing.TB) {
	t.Helper()
	v.Stop()
	v.start(t)
}

// Log returns the server's log so far, for failure messages.
func (v *Vault) Log() string { return Tail(v.logPath, 200) }
