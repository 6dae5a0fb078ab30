// Package testenv starts the real servers that sidekey's tests run against: etcd and
// kube-apiserver (as controller-runtime's envtest runs them) and a Vault dev server. Each
// listens on loopback on a free port and is stopped when the test ends.
//
// The binaries are built from the Go module proxy and cached by hack/testbin.sh (`make
// testbin`), which is the one place that names their versions. A test that needs a binary that
// is not built fails with a message saying so: it does not skip, so a CI run cannot pass
// without really running it.
package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// tools maps each binary to the hack/testbin.sh tool that builds it.
var tools = map[string]string{
	"kube-apiserver": "k8s", "etcd": "k8s", "kubectl": "k8s", "kubelet": "k8s",
	"vault": "vault", "helm": "helm", "gitleaks": "gitleaks",
}

var (
	dirsMu sync.Mutex
	dirs   = map[string]string{}
)

// Bin returns the path of a cached test binary (kube-apiserver, etcd, kubectl, kubelet, vault,
// helm, gitleaks), failing the test when it has not been built.
func Bin(t testing.TB, name string) string {
	t.Helper()
	tool, ok := tools[name]
	if !ok {
		t.Fatalf("testenv.Bin(%q): unknown binary", name)
	}
	dir, err := toolDir(tool)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("testenv: %s is not built (%v): run `make testbin` or `hack/testbin.sh %s`", name, err, tool)
	}
	return p
}

// toolDir asks hack/testbin.sh where a tool is cached, so versions are named in one place.
func toolDir(tool string) (string, error) {
	dirsMu.Lock()
	defer dirsMu.Unlock()
	if d, ok := dirs[tool]; ok {
		return d, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	var out, errb bytes.Buffer
	cmd := exec.Command("bash", filepath.Join(root, "hack", "testbin.sh"), "--dir", tool)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("hack/testbin.sh --dir %s: %w: %s", tool, err, errb.String())
	}
	d := strings.TrimSpace(out.String())
	dirs[tool] = d
	return d, nil
}

// RepoRoot returns the directory holding go.mod, found upwards from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Tail returns the last n lines of a log file, for failure messages.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
