package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidekey/sidekey/injector/spec"
)

// Notifier tells the app that secret files changed; names are the secrets' names.
type Notifier interface {
	Notify(ctx context.Context, names []string) error
}

// NewNotifier builds the notifier the spec asks for; nil for none.
func NewNotifier(oc spec.OnChange) (Notifier, error) {
	switch oc.Kind {
	case "", spec.OnChangeNone:
		return nil, nil
	case spec.OnChangeSignal:
		sig := unix.SignalNum(strings.ToUpper(oc.Signal))
		if sig == 0 {
			sig = unix.SignalNum("SIG" + strings.ToUpper(oc.Signal))
		}
		if sig == 0 {
			return nil, fmt.Errorf("onChange signal %q: unknown signal, want e.g. SIGHUP", oc.Signal)
		}
		return &SignalNotifier{Container: oc.Container, Signal: sig, Proc: "/proc"}, nil
	case spec.OnChangeHTTP:
		u, err := url.Parse(oc.URL)
		if err != nil {
			return nil, fmt.Errorf("onChange url: %w", err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("onChange url %q: must be http(s) to localhost, 127.0.0.1 or ::1", oc.URL)
		}
		return &HTTPNotifier{URL: oc.URL, Client: &http.Client{Timeout: 5 * time.Second}}, nil
	case spec.OnChangeTouch:
		return &TouchNotifier{Path: oc.Path}, nil
	}
	return nil, fmt.Errorf("onChange kind %q: want none, signal, http or touch", oc.Kind)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// HTTPNotifier POSTs {"changed": [names]} to a localhost URL and wants a 2xx answer.
type HTTPNotifier struct {
	URL    string
	Client *http.Client
}

// Notify implements Notifier.
func (n *HTTPNotifier) Notify(ctx context.Context, names []string) error {
	body, _ := json.Marshal(map[string][]string{"changed": names})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("notify %s: %w", n.URL, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.Client.Do(req)
	if err != nil {
		return fmt.Errorf("notify %s: %w", n.URL, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("notify %s: answered %s", n.URL, resp.Status)
	}
	return nil
}

// TouchNotifier sets a file's modification time to now, creating it if needed.
type TouchNotifier struct{ Path string }

// Notify implements Notifier.
func (n *TouchNotifier) Notify(context.Context, []string) error {
	now := time.Now()
	if err := os.Chtimes(n.Path, now, now); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("touch %s: %w", n.Path, err)
	}
	f, err := os.OpenFile(n.Path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("touch %s: %w", n.Path, err)
	}
	return f.Close()
}

// SignalNotifier sends a signal to the main process of one container of the pod: the
// processes whose environment has SIDEKEY_CONTAINER=<Container> and whose parent does not.
// It needs shareProcessNamespace and the agent running as the app's user (or CAP_KILL).
type SignalNotifier struct {
	Container string
	Signal    syscall.Signal
	Proc      string // "/proc"
}

// Notify implements Notifier.
func (n *SignalNotifier) Notify(context.Context, []string) error {
	pids, err := n.Find()
	if err != nil {
		return err
	}
	var errs []error
	for _, pid := range pids {
		if err := unix.Kill(pid, n.Signal); err != nil {
			errs = append(errs, fmt.Errorf("signal %s to pid %d of container %q: %w", unix.SignalName(n.Signal), pid, n.Container, err))
		}
	}
	return errors.Join(errs...)
}

// Find returns the top processes of the container.
func (n *SignalNotifier) Find() ([]int, error) {
	ents, err := os.ReadDir(n.Proc)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	in := map[int]int{} // pid -> ppid, of the container's processes
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(filepath.Join(n.Proc, e.Name(), "environ"))
		if err != nil || !hasEnv(env, spec.ContainerEnv+"="+n.Container) {
			continue
		}
		in[pid] = ppidOf(filepath.Join(n.Proc, e.Name(), "stat"))
	}
	var top []int
	for pid, ppid := range in {
		if _, child := in[ppid]; !child {
			top = append(top, pid)
		}
	}
	if len(top) == 0 {
		return nil, fmt.Errorf("no process of container %q found (needs shareProcessNamespace: true, %s=%s in that container, and the agent running as its user)", n.Container, spec.ContainerEnv, n.Container)
	}
	return top, nil
}

func hasEnv(environ []byte, kv string) bool {
	for _, e := range bytes.Split(environ, []byte{0}) {
		if string(e) == kv {
			return true
		}
	}
	return false
}

// ppidOf reads the parent pid from /proc/<pid>/stat.
func ppidOf(statPath string) int {
	b, err := os.ReadFile(statPath)
	if err != nil {
		return 0
	}
	return parsePPID(b)
}

// parsePPID parses "pid (comm) state ppid ..."; comm may hold spaces and parentheses. 0 when malformed.
func parsePPID(b []byte) int {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}
