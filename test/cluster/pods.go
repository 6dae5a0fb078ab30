package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
)

// Namespace creates a namespace named prefix-<random> with its default ServiceAccount and
// kube-root-ca.crt (there is no controller-manager to make them) and returns its name. The
// kubelet's pod logs of the namespace are removed with the cluster.
func (c *Cluster) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns := prefix + "-" + rand.String(5)
	if err := c.CreateNamespace(ctx, ns); err != nil {
		t.Fatalf("cluster: %v", err)
	}
	return ns
}

// CreateNamespace creates the namespace ns like Namespace does.
func (c *Cluster) CreateNamespace(ctx context.Context, ns string) error {
	f, err := os.OpenFile(filepath.Join(c.Dir, "namespaces"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(f, ns)
	f.Close()
	if err != nil {
		return err
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	if err := c.CreateServiceAccount(ctx, ns, "default"); err != nil {
		return err
	}
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		return err
	}
	return c.ensureRootCA(ctx, ns, ca)
}

// CreateServiceAccount creates ns/name unless it exists.
func (c *Cluster) CreateServiceAccount(ctx context.Context, ns, name string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service account %s/%s: %w", ns, name, err)
	}
	return nil
}

// WaitPod polls the pod until done returns true or an error, or ctx ends. The error then says
// where the pod stands (phase, container states, recent events).
func (c *Cluster) WaitPod(ctx context.Context, ns, name string, done func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	var pod *corev1.Pod
	for {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			pod = p
			ok, err := done(p)
			if err != nil {
				return p, fmt.Errorf("pod %s/%s: %w\n%s", ns, name, err, c.Describe(context.Background(), p))
			}
			if ok {
				return p, nil
			}
		}
		select {
		case <-ctx.Done():
			if pod == nil {
				return nil, fmt.Errorf("pod %s/%s: %w", ns, name, ctx.Err())
			}
			return pod, fmt.Errorf("pod %s/%s: %w\n%s", ns, name, ctx.Err(), c.Describe(context.Background(), pod))
		case <-time.After(150 * time.Millisecond):
		}
	}
}

// Running is a WaitPod condition: the named container runs (and has passed its startup probe,
// when it has one). A pod that has failed is an error.
func Running(container string) func(*corev1.Pod) (bool, error) {
	return func(p *corev1.Pod) (bool, error) {
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("phase Failed: %s", p.Status.Message)
		}
		for _, s := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
			if s.Name == container && s.State.Running != nil && (s.Started == nil || *s.Started) {
				return true, nil
			}
		}
		return false, nil
	}
}

// Created is a WaitPod condition: the named container's process runs, whether or not its
// startup probe has passed yet. A pod that has failed is an error.
func Created(container string) func(*corev1.Pod) (bool, error) {
	return func(p *corev1.Pod) (bool, error) {
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("phase Failed: %s", p.Status.Message)
		}
		for _, s := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
			if s.Name == container && s.State.Running != nil {
				return true, nil
			}
		}
		return false, nil
	}
}

// Phase is a WaitPod condition: the pod reached the phase; another final phase is an error.
func Phase(want corev1.PodPhase) func(*corev1.Pod) (bool, error) {
	return func(p *corev1.Pod) (bool, error) {
		if p.Status.Phase == want {
			return true, nil
		}
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("phase %s; want %s", p.Status.Phase, want)
		}
		return false, nil
	}
}

// Describe summarizes a pod for failure messages: phase, each container's state, events.
func (c *Cluster) Describe(ctx context.Context, p *corev1.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pod %s/%s phase=%s %s\n", p.Namespace, p.Name, p.Status.Phase, p.Status.Message)
	for _, s := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
		st := "waiting"
		switch {
		case s.State.Running != nil:
			st = "running"
		case s.State.Terminated != nil:
			st = fmt.Sprintf("terminated exit=%d %s %s", s.State.Terminated.ExitCode, s.State.Terminated.Reason, s.State.Terminated.Message)
		case s.State.Waiting != nil:
			st = fmt.Sprintf("waiting %s %s", s.State.Waiting.Reason, s.State.Waiting.Message)
		}
		fmt.Fprintf(&b, "  %s: %s restarts=%d\n", s.Name, st, s.RestartCount)
	}
	evs, err := c.Client.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
	if err == nil {
		sort.Slice(evs.Items, func(i, j int) bool { return evs.Items[i].LastTimestamp.Before(&evs.Items[j].LastTimestamp) })
		for _, e := range evs.Items {
			fmt.Fprintf(&b, "  event %s %s: %s\n", e.Type, e.Reason, e.Message)
		}
	}
	return b.String()
}

// ContainerLog returns what a container of a pod wrote to stdout and stderr, read from the
// kubelet's log files (<PodLogDir>/<ns>_<pod>_<uid>/<container>/<restart>.log), every restart
// in order, with the CRI prefix (time, stream, tag) removed.
func ContainerLog(p *corev1.Pod, container string) (string, error) {
	dir := filepath.Join(PodLogDir, fmt.Sprintf("%s_%s_%s", p.Namespace, p.Name, p.UID), container)
	files, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("no log of container %s in %s", container, dir)
	}
	sort.Slice(files, func(i, j int) bool { return logIndex(files[i]) < logIndex(files[j]) })
	var b strings.Builder
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return "", err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			b.WriteString(criLine(sc.Text()))
		}
		fh.Close()
	}
	return b.String(), nil
}

// criLine strips "2026-01-02T15:04:05.999999999Z stdout F " from a CRI log line; a partial
// line (tag P) is joined to the next.
func criLine(line string) string {
	parts := strings.SplitN(line, " ", 4)
	if len(parts) < 4 {
		return line + "\n"
	}
	if parts[2] == "P" {
		return parts[3]
	}
	return parts[3] + "\n"
}

func logIndex(path string) int {
	var n int
	fmt.Sscanf(strings.TrimSuffix(filepath.Base(path), ".log"), "%d", &n)
	return n
}

// WaitLog waits until the container's log contains want and returns the log.
func (c *Cluster) WaitLog(ctx context.Context, p *corev1.Pod, container, want string) (string, error) {
	var last string
	var lastErr error
	for {
		last, lastErr = ContainerLog(p, container)
		if lastErr == nil && strings.Contains(last, want) {
			return last, nil
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return last, fmt.Errorf("log of %s/%s %s: %w (%v)", p.Namespace, p.Name, container, ctx.Err(), lastErr)
			}
			return last, fmt.Errorf("log of %s/%s %s has no %q: %w; log:\n%s", p.Namespace, p.Name, container, want, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// VolumePath is where the kubelet mounts a pod's emptyDir volume on the host.
func (c *Cluster) VolumePath(p *corev1.Pod, volume string) string {
	return filepath.Join(c.KubeletRoot, "pods", string(p.UID), "volumes", "kubernetes.io~empty-dir", volume)
}

// MountType returns the filesystem type of the mount at path on the host ("" if none).
func MountType(path string) string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[1] == path {
			return f[2]
		}
	}
	return ""
}

// FirstOutput returns when a container first wrote to stdout or stderr: the CRI timestamp of
// the first line of its first log file (nanoseconds, from the runtime, unlike the second-
// resolution times of the pod status).
func FirstOutput(p *corev1.Pod, container string) (time.Time, error) {
	f := filepath.Join(PodLogDir, fmt.Sprintf("%s_%s_%s", p.Namespace, p.Name, p.UID), container, "0.log")
	fh, err := os.Open(f)
	if err != nil {
		return time.Time{}, err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	if !sc.Scan() {
		return time.Time{}, fmt.Errorf("%s is empty", f)
	}
	ts, _, _ := strings.Cut(sc.Text(), " ")
	return time.Parse(time.RFC3339Nano, ts)
}
