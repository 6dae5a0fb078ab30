package charts

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestProbeCapabilities runs the real `sidekey probe` with exactly the capabilities the chart
// gives the probe container (probe.capabilities in values.yaml) and no others, as the
// container runtime would (uid 0, bounding set = the list), and checks that it loads, sees a
// read by another user's process, kills it in enforce mode, and can follow /proc/<pid>/root
// of another user's process as Kubernetes mode does. So the chart's least-privilege claim is
// measured, not guessed.
func TestProbeCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs with a reduced capability set")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skipf("kernel without BTF (%v): the probe cannot load here", err)
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skipf("setpriv (util-linux) not installed: %v", err)
	}
	caps := chartProbeCapabilities(t)
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + strings.ToLower(c)
	}
	limited := func(args ...string) *exec.Cmd {
		return exec.Command(setpriv, append([]string{"--bounding-set=" + bounding, "--inh-caps=-all"}, args...)...)
	}
	asNobody := func(args ...string) *exec.Cmd {
		return exec.Command(setpriv, append([]string{"--reuid=65534", "--regid=65534", "--clear-groups"}, args...)...)
	}

	sidekey := buildSidekey(t)

	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil { // t.TempDir's parent is 0700; nobody must reach the file
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0755"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	secret := filepath.Join(dir, "key")
	if err := os.WriteFile(secret, []byte("not-a-real-secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("follow /proc/pid/root of another user", func(t *testing.T) {
		sleep := asNobody("sleep", "30")
		if err := sleep.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
		time.Sleep(200 * time.Millisecond)
		pid := sleep.Process.Pid
		for _, p := range []string{"/proc/%d/root/etc", "/proc/%d/exe"} {
			p = strings.Replace(p, "%d", strconv.Itoa(pid), 1)
			if out, err := limited("stat", "-L", "-c", "%i", p).CombinedOutput(); err != nil {
				t.Errorf("stat %s with %v: %v: %s", p, caps, err, out)
			}
		}
	})

	t.Run("load, report, enforce", func(t *testing.T) {
		probe := limited(sidekey, "probe", "--watch", dir, "--allow", "/bin/true", "--attach", "tracepoint", "--rate-interval", "0", "--enforce")
		var stdout bytes.Buffer
		probe.Stdout = &stdout
		stderr, err := probe.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := probe.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan string, 1)
		var logs bytes.Buffer
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				logs.WriteString(sc.Text() + "\n")
				if strings.Contains(sc.Text(), "msg=ready") {
					ready <- sc.Text()
				}
			}
			close(ready)
		}()
		select {
		case _, ok := <-ready:
			if !ok {
				_ = probe.Wait()
				t.Fatalf("the probe with capabilities %v exited before it was ready:\n%s", caps, logs.String())
			}
		case <-time.After(90 * time.Second):
			_ = probe.Process.Kill()
			t.Fatalf("the probe with capabilities %v was not ready after 90s", caps)
		}
		err = asNobody("cat", secret).Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != -1 && ee.ExitCode() != 137 {
			t.Errorf("cat of a watched file in enforce mode: %v; want it killed", err)
		}
		time.Sleep(time.Second)
		_ = probe.Process.Signal(syscall.SIGTERM)
		_ = probe.Wait()
		var denied bool
		for _, line := range strings.Split(stdout.String(), "\n") {
			var ev struct{ Verdict, Exe, Path string }
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Verdict == "deny" && strings.HasSuffix(ev.Exe, "/cat") && ev.Path == secret {
				denied = true
			}
		}
		if !denied {
			t.Errorf("no deny event for cat reading %s; events:\n%s\nlogs:\n%s", secret, stdout.String(), logs.String())
		}
	})
}

// chartProbeCapabilities reads the default of probe.capabilities from values.yaml.
func chartProbeCapabilities(t *testing.T) []string {
	t.Helper()
	for _, v := range chartValues(t) {
		if v.Key == "probe.capabilities" {
			var caps []string
			if err := json.Unmarshal([]byte(v.Default), &caps); err != nil || len(caps) == 0 {
				t.Fatalf("probe.capabilities default %s: %v", v.Default, err)
			}
			return caps
		}
	}
	t.Fatal("values.yaml has no probe.capabilities")
	return nil
}
