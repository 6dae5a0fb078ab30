package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
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

func TestProbeStandalone(t *testing.T) {
	probetest.RequireBPF(t)
	dir := probetest.MountTmpfs(t)
	probetest.WriteFile(t, filepath.Join(dir, "token"), "s3cr3t")
	allowed := probetest.CopyExe(t, "/bin/cat", "app")

	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newProbeCmd()
	cmd.SetArgs([]string{"--watch", dir, "--allow", allowed, "--attach", "auto"})
	cmd.SetOut(outW)
	cmd.SetErr(errW)
	done := make(chan error, 1)
	go func() {
		done <- cmd.ExecuteContext(ctx)
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
	case err := <-done:
		t.Fatalf("probe exited before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("probe not ready within 30s")
	}

	if out, err := exec.Command(allowed, filepath.Join(dir, "token")).Output(); err != nil || string(out) != "s3cr3t" {
		t.Fatalf("allowed reader: %q, %v", out, err)
	}
	cat := exec.Command("/bin/cat", filepath.Join(dir, "token"))
	if err := cat.Run(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(outR)
	if !lines.Scan() {
		t.Fatal("no event line on stdout")
	}
	var rec map[string]any
	if err := json.Unmarshal(lines.Bytes(), &rec); err != nil {
		t.Fatalf("event line %q: %v", lines.Text(), err)
	}
	for k, want := range map[string]any{
		"verdict": "alert", "comm": "cat", "exe": "/usr/bin/cat", "path": filepath.Join(dir, "token"),
		"pid": float64(cat.Process.Pid), "uid": float64(0),
	} {
		if rec[k] != want {
			t.Errorf("event %s = %v; want %v (line %s)", k, rec[k], want, lines.Text())
		}
	}
	for _, k := range []string{"time", "cgroup_id"} {
		if _, ok := rec[k]; !ok {
			t.Errorf("event has no %s: %s", k, lines.Text())
		}
	}

	cancel() // what SIGINT/SIGTERM do
	go io.Copy(io.Discard, outR)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("probe exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("probe did not exit after cancel")
	}
}
