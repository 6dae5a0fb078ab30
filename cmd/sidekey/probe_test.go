package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidekey/sidekey/bpf/probetest"
)

func TestProbeRejectsNonTmpfsWatch(t *testing.T) {
	dir := t.TempDir() // on the root filesystem
	cmd := newProbeCmd()
	cmd.SetArgs([]string{"--watch", dir})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	err := cmd.Execute()
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), dir) {
		t.Fatalf("probe --watch %s = %v; want exit 2 naming the directory", dir, err)
	}
}

// runningProbe is `sidekey probe` running in this process until stop.
type runningProbe struct {
	lines *bufio.Scanner // stdout
	done  chan error
	out   *io.PipeReader
}

func startProbe(t *testing.T, args ...string) *runningProbe {
	t.Helper()
	probetest.RequireBPF(t)
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	cmd := newProbeCmd()
	cmd.SetArgs(args)
	cmd.SetOut(outW)
	cmd.SetErr(errW)
	p := &runningProbe{lines: bufio.NewScanner(outR), done: make(chan error, 1), out: outR}
	go func() {
		p.done <- cmd.ExecuteContext(context.Background())
		outW.Close()
		errW.Close()
	}()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errR)
		for sc.Scan() {
			t.Log(sc.Text())
			if strings.Contains(sc.Text(), "msg=ready") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case err := <-p.done:
		t.Fatalf("probe exited before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("probe not ready within 30s")
	}
	return p
}

func (p *runningProbe) line(t *testing.T) string {
	t.Helper()
	if !p.lines.Scan() {
		t.Fatal("no event line on stdout")
	}
	return p.lines.Text()
}

// stop sends a real SIGTERM to this process: the command's signal.NotifyContext,
// registered before "ready", turns it into a clean shutdown.
func (p *runningProbe) stop(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, p.out)
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("probe exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("probe did not exit after SIGTERM")
	}
}

func TestProbeStandalone(t *testing.T) {
	probetest.RequireBPF(t)
	dir := probetest.MountTmpfs(t)
	probetest.WriteFile(t, filepath.Join(dir, "token"), "s3cr3t")
	allowed := probetest.CopyExe(t, "/bin/cat", "app")
	p := startProbe(t, "--watch", dir, "--allow", allowed, "--attach", "auto")

	if out, err := exec.Command(allowed, filepath.Join(dir, "token")).Output(); err != nil || string(out) != "s3cr3t" {
		t.Fatalf("allowed reader: %q, %v", out, err)
	}
	cat := exec.Command("/bin/cat", filepath.Join(dir, "token"))
	if err := cat.Run(); err != nil {
		t.Fatal(err)
	}
	line := p.line(t)
	var rec map[string]any
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatalf("event line %q: %v", line, err)
	}
	for k, want := range map[string]any{
		"verdict": "alert", "comm": "cat", "exe": "/usr/bin/cat", "path": filepath.Join(dir, "token"),
		"pid": float64(cat.Process.Pid), "uid": float64(0),
	} {
		if rec[k] != want {
			t.Errorf("event %s = %v; want %v (line %s)", k, rec[k], want, line)
		}
	}
	for _, k := range []string{"time", "cgroup_id"} {
		if _, ok := rec[k]; !ok {
			t.Errorf("event has no %s: %s", k, line)
		}
	}
	p.stop(t)
}

func TestProbeEnforceText(t *testing.T) {
	probetest.RequireBPF(t)
	dir := probetest.MountTmpfs(t)
	probetest.WriteFile(t, filepath.Join(dir, "token"), "s3cr3t")
	allowed := probetest.CopyExe(t, "/bin/cat", "app")
	p := startProbe(t, "--watch", dir, "--allow", allowed, "--enforce", "--output", "text")

	out, err := exec.Command("/bin/head", "-c", "100", filepath.Join(dir, "token")).Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || len(out) != 0 {
		t.Fatalf("head in enforce mode: %q, %v; want killed before reading", out, err)
	}
	if got, err := exec.Command(allowed, filepath.Join(dir, "token")).Output(); err != nil || string(got) != "s3cr3t" {
		t.Fatalf("allowed reader in enforce mode: %q, %v", got, err)
	}
	line := p.line(t)
	if !strings.Contains(line, " DENY ") || !strings.Contains(line, `exe="/usr/bin/head"`) ||
		!strings.Contains(line, filepath.Join(dir, "token")) || strings.Contains(line, "s3cr3t") {
		t.Errorf("text event %q; want a DENY of /usr/bin/head naming the file", line)
	}
	p.stop(t)
}
