package kube_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sidekey/sidekey/bpf"
	"github.com/sidekey/sidekey/bpf/kube"
	"github.com/sidekey/sidekey/bpf/policy"
	"github.com/sidekey/sidekey/bpf/probetest"
	"github.com/sidekey/sidekey/bpf/report"
	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/testenv"
)

const node = "node-a"

// container is a real process chrooted into a directory holding busybox under two names
// (the allowed /bin/app and a /bin/busybox that is not allowed) and the agent, placed in
// a real cgroup named after its container ID, the way the kubelet's cgroupfs driver does.
type container struct {
	id, root string
	cmd      *exec.Cmd
}

func startContainer(t *testing.T, podUID string) *container {
	t.Helper()
	// Its own root filesystem, like a container's overlay mount: its own device.
	root := t.TempDir()
	probetest.MountTmpfsAt(t, root)
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bin/app", "bin/busybox", "sidekey-agent"} {
		dst := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile("/usr/bin/busybox")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b := make([]byte, 32)
	rand.Read(b)
	id := hex.EncodeToString(b)
	cg := filepath.Join("/sys/fs/cgroup/pids", "sidekey-test", "pod"+podUID, id)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Skipf("cannot create a cgroup for the fake container: %v", err)
	}
	cmd := exec.Command("/bin/app", "sleep", "600")
	cmd.Args[0] = "busybox" // busybox picks the applet from argv[1] only under this name
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.Remove(cg)
		os.Remove(filepath.Dir(cg))
	})
	return &container{id: id, root: root, cmd: cmd}
}

// exec runs busybox applet args inside the container's root (chroot) and cgroup.
func (c *container) exec(t *testing.T, exe string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Args[0] = "busybox"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: c.root}
	out, err := cmd.Output()
	return string(out), err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWatcherFollowsPods(t *testing.T) {
	probetest.RequireBPF(t)
	cfg := testenv.StartAPIServer(t)
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))

	p, err := bpf.Load(bpf.Options{Mode: bpf.ModeAuto, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	state := policy.NewState(p)
	kubelet := t.TempDir()
	w := kube.New(client, state, kube.Config{NodeName: node, KubeletRoot: kubelet, AllowEnforce: true, Resync: time.Second, Scan: p.ScanOpenFiles}, log)
	events := kube.NewEvents(client, node, time.Minute)
	defer events.Shutdown()

	records := make(chan report.Record, 100)
	pumped := make(chan error, 1)
	go func() {
		pumped <- report.Pump(p, func(ev bpf.Event) (policy.Watch, string) {
			wt, _ := state.ByID(ev.WatchID)
			return wt, w.ContainerOf(ev.PID, ev.ExeID, wt.PodUID)
		}, func(r report.Record, wt policy.Watch) {
			events.Report(r, wt.PodUID)
			records <- r
		}, log)
	}()
	defer func() {
		p.Close()
		if err := <-pumped; err != nil {
			t.Errorf("Pump: %v", err)
		}
	}()

	newPod := func(name, nodeName string, annotations map[string]string) *corev1.Pod {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: annotations},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app:1"}},
				Volumes: []corev1.Volume{{Name: spec.VolumeName, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}}},
		}
		pod, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The kubelet's part: mount the tmpfs.
		probetest.MountTmpfsAt(t, kube.VolumeDir(kubelet, string(pod.UID)))
		return pod
	}
	injected := map[string]string{
		spec.AnnotationStatus: spec.StatusInjected, spec.AnnotationProbe: "enforce",
		spec.AnnotationAllowedReaders: "/bin/app, relative/ignored",
	}
	app := newPod("app", node, injected)
	other := newPod("elsewhere", "node-b", injected)
	plain := newPod("plain", node, nil)

	// The agent's part, done before the watch starts: this test process is no allowed reader.
	probetest.WriteFile(t, filepath.Join(kube.VolumeDir(kubelet, string(app.UID)), "token"), "s3cr3t")
	go w.Run(ctx)

	// Before its containers run, the pod is not watched: the agent writing the secrets
	// and the app reading them while starting must not be flagged. (Resync is 1s.)
	time.Sleep(2 * time.Second)
	if w, ok := state.Get(string(app.UID)); ok {
		t.Fatalf("pod watched before its containers run: %+v", w)
	}
	dir := kube.VolumeDir(kubelet, string(app.UID))
	dev, err := policy.TmpfsDev(dir)
	if err != nil {
		t.Fatal(err)
	}

	// The container starts: the kubelet reports its ID; the readers resolve inside it.
	c := startContainer(t, string(app.UID))
	app.Status.ContainerStatuses = []corev1.ContainerStatus{{
		Name: "app", ContainerID: "containerd://" + c.id, Ready: true,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
	}}
	if app, err = client.CoreV1().Pods("default").UpdateStatus(ctx, app, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "readers resolved and enforce on", func() bool {
		w, _ := state.Get(string(app.UID))
		return w.Enforce && len(w.Readers) == 2
	})
	got, _ := state.Get(string(app.UID))
	if got.Dev != dev || got.Pod != "app" || got.Namespace != "default" || got.Dir != dir {
		t.Errorf("watch = %+v; want dev %s of pod default/app at %s", got, bpf.FormatDev(dev), dir)
	}
	appID, _ := bpf.StatID(filepath.Join(c.root, "bin/app"))
	agentID, _ := bpf.StatID(filepath.Join(c.root, "sidekey-agent"))
	wantReaders := []policy.Reader{
		{Exe: agentID, Path: spec.AgentPath, Container: "app"},
		{Exe: appID, Path: "/bin/app", Container: "app"},
	}
	if diff := cmp.Diff(wantReaders, got.Readers); diff != "" {
		t.Errorf("readers mismatch (-want +got):\n%s", diff)
	}
	for _, pod := range []*corev1.Pod{other, plain} {
		if _, ok := state.Get(string(pod.UID)); ok {
			t.Errorf("pod %s is watched; want only injected pods of %s", pod.Name, node)
		}
	}

	// Real reads inside the container: the app reads, busybox under another name is killed.
	secrets := filepath.Join(c.root, "secrets")
	if err := os.Mkdir(secrets, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dir, secrets, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(secrets, unix.MNT_DETACH) })
	if out, err := c.exec(t, "/bin/app", "cat", "/secrets/token"); err != nil || out != "s3cr3t" {
		t.Fatalf("allowed reader in the container: %q, %v", out, err)
	}
	out, err := c.exec(t, "/bin/busybox", "cat", "/secrets/token")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || out != "" {
		t.Fatalf("busybox cat in enforce mode: %q, %v; want killed", out, err)
	}
	select {
	case r := <-records:
		if events.Report(r, string(app.UID)) {
			t.Error("a second Kubernetes Event for the same reader and file within the interval was posted")
		}
		if r.Verdict != "deny" || r.Exe != "/bin/busybox" || r.Pod != "app" || r.Namespace != "default" || r.Container != "app" ||
			r.Path != filepath.Join(dir, "token") {
			t.Errorf("record = %+v; want deny of /bin/busybox in container app of pod default/app", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no record for the denied read")
	}
	waitFor(t, "a Kubernetes Event on the pod", func() bool {
		evs, err := client.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.UID == app.UID && e.Reason == kube.ReasonDenied && strings.Contains(e.Message, "/bin/busybox") &&
				strings.Contains(e.Message, "container app") &&
				!strings.Contains(e.Message, "s3cr3t") {
				return true
			}
		}
		return false
	})

	// A debug container (kubectl debug) whose image also has /bin/app: not an allowed
	// reader there, killed when it reads.
	dbg := startContainer(t, string(app.UID))
	app.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name: "debugger", Image: "busybox:1", TerminationMessagePolicy: corev1.TerminationMessageReadFile, ImagePullPolicy: corev1.PullNever,
	}}}
	if app, err = client.CoreV1().Pods("default").UpdateEphemeralContainers(ctx, "app", app, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	app.Status.EphemeralContainerStatuses = []corev1.ContainerStatus{{
		Name: "debugger", ContainerID: "containerd://" + dbg.id,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
	}}
	if app, err = client.CoreV1().Pods("default").UpdateStatus(ctx, app, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	dbgApp, _ := bpf.StatID(filepath.Join(dbg.root, "bin/app"))
	waitFor(t, "the debug container resolved", func() bool { return w.ContainerOf(0, dbgApp, string(app.UID)) == "debugger" })
	got, _ = state.Get(string(app.UID))
	if diff := cmp.Diff(wantReaders, got.Readers); diff != "" || !got.Enforce {
		t.Errorf("readers with a debug container (-want +got):\n%s; enforce %t", diff, got.Enforce)
	}
	dbgSecrets := filepath.Join(dbg.root, "secrets")
	if err := os.Mkdir(dbgSecrets, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dir, dbgSecrets, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dbgSecrets, unix.MNT_DETACH) })
	if out, err := dbg.exec(t, "/bin/app", "cat", "/secrets/token"); err == nil || out != "" {
		t.Fatalf("/bin/app of the debug container read %q, %v; want killed", out, err)
	}
	select {
	case r := <-records:
		if r.Verdict != "deny" || r.Container != "debugger" || r.Exe != "/bin/app" {
			t.Errorf("record = %+v; want deny of /bin/app in container debugger", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no record for the debug container's read")
	}

	// The pod goes away: its device is unwatched.
	if err := client.CoreV1().Pods("default").Delete(ctx, "app", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod app unwatched", func() bool { _, ok := state.Get(string(app.UID)); return !ok })
	if out, err := c.exec(t, "/bin/busybox", "cat", "/secrets/token"); err != nil || out != "s3cr3t" {
		t.Fatalf("read after the pod is gone: %q, %v; want no enforcement", out, err)
	}
}

func TestContainerIDs(t *testing.T) {
	id := strings.Repeat("ab12", 16)
	tests := []struct {
		name, file string
		want       []string
	}{
		{"cgroupfs v1", "12:pids:/kubepods/besteffort/pod1234/" + id + "\n11:memory:/kubepods/besteffort/pod1234/" + id + "\n", []string{id}},
		{"systemd v2", "0::/kubepods.slice/kubepods-pod12_34.slice/cri-containerd-" + id + ".scope\n", []string{id}},
		{"crio", "0::/kubepods.slice/crio-" + id + ".scope", []string{id}},
		{"host process", "0::/init.scope\n1:name=systemd:/\n", nil},
		{"not hex", "0::/kubepods/" + strings.Repeat("z", 64), nil},
		{"garbage", "::::\n\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, kube.ContainerIDs(tt.file)); diff != "" {
				t.Errorf("ContainerIDs mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzContainerIDs(f *testing.F) {
	f.Add("0::/kubepods.slice/cri-containerd-" + strings.Repeat("a", 64) + ".scope\n")
	f.Add("12:pids:/")
	f.Fuzz(func(t *testing.T, s string) {
		for _, id := range kube.ContainerIDs(s) {
			if len(id) != 64 || !strings.Contains(s, id) {
				t.Fatalf("ContainerIDs(%q) returned %q", s, id)
			}
		}
	})
}

func TestReaderPaths(t *testing.T) {
	got := kube.ReaderPaths(" /app/server , ,relative, /usr/bin/../bin/python3,/app/server")
	want := []string{spec.AgentPath, "/app/server", "/usr/bin/python3"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ReaderPaths mismatch (-want +got):\n%s", diff)
	}
}
