// Package kube is the probe's Kubernetes mode: it watches the pods of one node, turns each
// injected pod into a watch (its sidekey tmpfs under the kubelet's pods directory, the
// allowed readers resolved inside the pod's containers) and reports flagged reads as
// rate-limited Kubernetes Events on the pod.
//
// Finding a container's processes: the kubelet puts every container in a cgroup whose
// path names the container ID (cgroupfs: .../pod<uid>/<id>; systemd:
// .../cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope). The watcher scans
// /proc/<pid>/cgroup of every process once per sync and matches those IDs against the
// pod's containerStatuses; an allowed reader path is then resolved through
// /proc/<pid>/root of any process of each running container, so it names the file inside
// that container's root filesystem (its overlay device and inode).
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/sidekey/sidekey/bpf"
	"github.com/sidekey/sidekey/bpf/policy"
	"github.com/sidekey/sidekey/injector/spec"
)

// Config configures a Watcher.
type Config struct {
	NodeName string
	// KubeletRoot is the kubelet's root directory (--root-dir), /var/lib/kubelet by default.
	KubeletRoot string
	// AllowEnforce lets pods ask for enforce mode (sidekey.io/probe: enforce); without
	// it every pod is audited.
	AllowEnforce bool
	// ProcRoot is where procfs is mounted, /proc by default.
	ProcRoot string
	// Resync re-resolves every pod this often (containers restart, processes come and go).
	Resync time.Duration
	// Scan, when set, runs after a pod's tmpfs is first watched, to report files that
	// were opened before (bpf.Probe.ScanOpenFiles).
	Scan func() error
}

// Watcher keeps a policy.State in step with the injected pods of one node.
type Watcher struct {
	cfg    Config
	client kubernetes.Interface
	state  *policy.State
	log    *slog.Logger

	mu    sync.Mutex
	pods  map[string]*corev1.Pod  // by UID, injected pods only
	roots map[uint32]containerRef // container root filesystem device -> container
}

// New returns a watcher that applies the pods of cfg.NodeName to state.
func New(client kubernetes.Interface, state *policy.State, cfg Config, log *slog.Logger) *Watcher {
	if cfg.KubeletRoot == "" {
		cfg.KubeletRoot = "/var/lib/kubelet"
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	return &Watcher{cfg: cfg, client: client, state: state, log: log.With("component", "kube"), pods: map[string]*corev1.Pod{}}
}

// VolumeDir is where the kubelet mounts the pod's sidekey tmpfs on the node.
func VolumeDir(kubeletRoot, podUID string) string {
	return filepath.Join(kubeletRoot, "pods", podUID, "volumes", "kubernetes.io~empty-dir", spec.VolumeName)
}

// Run watches the node's pods until ctx ends. It returns once the informer stops.
func (w *Watcher) Run(ctx context.Context) error {
	lw := cache.NewListWatchFromClient(w.client.CoreV1().RESTClient(), "pods", corev1.NamespaceAll,
		fields.OneTermEqualSelector("spec.nodeName", w.cfg.NodeName))
	inf := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, w.cfg.Resync, cache.Indexers{})
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.onPod(obj) },
		UpdateFunc: func(_, obj any) { w.onPod(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				w.remove(string(pod.UID))
			}
		},
	})
	if err != nil {
		return fmt.Errorf("watch pods of node %s: %w", w.cfg.NodeName, err)
	}
	inf.Run(ctx.Done())
	return nil
}

func (w *Watcher) onPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if err := w.Sync(pod); err != nil {
		lvl := slog.LevelWarn
		if errors.Is(err, ErrNotReady) || errors.Is(err, ErrNoVolume) {
			lvl = slog.LevelDebug
		}
		w.log.Log(context.Background(), lvl, "pod not watched yet", "namespace", pod.Namespace, "pod", pod.Name, "err", err)
	}
}

func (w *Watcher) remove(uid string) {
	w.mu.Lock()
	delete(w.pods, uid)
	for dev, ref := range w.roots {
		if ref.podUID == uid {
			delete(w.roots, dev)
		}
	}
	w.mu.Unlock()
	if err := w.state.Delete(uid); err != nil {
		w.log.Error("unwatch pod", "uid", uid, "err", err)
	}
}

// Errors from Sync.
var (
	// ErrNoVolume: the pod's sidekey tmpfs is not (or no longer) mounted on this node.
	ErrNoVolume = errors.New("sidekey tmpfs not mounted")
	// ErrNotReady: no container runs yet, or a running one has no process found yet.
	ErrNotReady = errors.New("containers not resolved yet")
)

// Sync brings the watch of one pod up to date: injected pods with a mounted sidekey
// tmpfs are watched, others are not.
func (w *Watcher) Sync(pod *corev1.Pod) error {
	uid := string(pod.UID)
	if pod.Annotations[spec.AnnotationStatus] != spec.StatusInjected || pod.Spec.NodeName != w.cfg.NodeName {
		w.remove(uid)
		return nil
	}
	watch, unresolved, err := w.PodWatch(pod)
	if err != nil {
		w.remove(uid)
		return err
	}
	prev, had := w.state.Get(uid)
	if len(unresolved) > 0 {
		if !had {
			// Not before every running container's readers are known: the agent writing
			// the secrets while starting must not be flagged.
			return fmt.Errorf("%w: containers %s", ErrNotReady, strings.Join(unresolved, ", "))
		}
		// A container restarting or a process scan race: keep what was known of it.
		for _, r := range prev.Readers {
			if slices.Contains(unresolved, r.Container) {
				watch.Readers = append(watch.Readers, r)
			}
		}
	}
	w.mu.Lock()
	w.pods[uid] = pod
	w.mu.Unlock()
	watch, err = w.state.Put(uid, watch)
	if err != nil {
		return fmt.Errorf("watch pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if !had || prev.Dev != watch.Dev || prev.Enforce != watch.Enforce || len(prev.Readers) != len(watch.Readers) {
		w.log.Info("watching pod", "namespace", pod.Namespace, "pod", pod.Name, "device", bpf.FormatDev(watch.Dev),
			"enforce", watch.Enforce, "readers", len(watch.Readers))
	}
	if (!had || prev.Dev != watch.Dev) && w.cfg.Scan != nil {
		if err := w.cfg.Scan(); err != nil {
			w.log.Warn("scan for files opened before the watch", "err", err)
		}
	}
	return nil
}

// PodWatch computes the watch of an injected pod: its tmpfs, mode and allowed readers
// (the sidekey.io/allowed-readers paths and the agent, resolved in every running
// container). It also names the containers that keep the pod from being watched yet:
// running ones whose processes were not found, app containers not started.
func (w *Watcher) PodWatch(pod *corev1.Pod) (policy.Watch, []string, error) {
	dir := VolumeDir(w.cfg.KubeletRoot, string(pod.UID))
	dev, err := policy.TmpfsDev(dir)
	if err != nil {
		return policy.Watch{}, nil, fmt.Errorf("%w: %w", ErrNoVolume, err)
	}
	enforce := false
	switch mode := pod.Annotations[spec.AnnotationProbe]; mode {
	case "enforce":
		enforce = w.cfg.AllowEnforce
		if !enforce {
			w.log.Debug("pod asks for enforce but this node allows audit only (--allow-enforce)", "namespace", pod.Namespace, "pod", pod.Name)
		}
	case "", "audit":
	default:
		w.log.Warn("unknown probe mode, auditing", "namespace", pod.Namespace, "pod", pod.Name, "annotation", spec.AnnotationProbe, "value", mode)
	}
	paths := ReaderPaths(pod.Annotations[spec.AnnotationAllowedReaders])
	pids, running := w.containerPIDs(pod)
	var unresolved []string
	for _, name := range running {
		if _, ok := pids[name]; !ok {
			unresolved = append(unresolved, name)
		}
	}
	// App containers that have not started yet would read before being resolved.
	started := map[string]bool{}
	for _, st := range pod.Status.ContainerStatuses {
		started[st.Name] = st.State.Waiting == nil
	}
	for _, c := range pod.Spec.Containers {
		if !started[c.Name] {
			unresolved = append(unresolved, c.Name+" (not started)")
		}
	}
	// Enforce only once every app container runs and its readers are resolved: an
	// app that reads its secrets while starting must not be killed for our delay.
	for _, c := range pod.Spec.Containers {
		if _, ok := pids[c.Name]; !ok {
			enforce = false
		}
	}
	var readers []policy.Reader
	seen := map[bpf.FileID]bool{}
	ephemeral := map[string]bool{}
	for _, c := range pod.Spec.EphemeralContainers {
		ephemeral[c.Name] = true
	}
	for _, c := range sortedKeys(pids) {
		w.noteRoot(pod, c, pids[c])
		if ephemeral[c] {
			// A debug container (kubectl debug) is what the probe is for: its image's
			// /bin/sh or /bin/busybox must not become an allowed reader because the
			// app's image has one at the same path.
			continue
		}
		for _, p := range paths {
			id, err := bpf.StatID(filepath.Join(w.cfg.ProcRoot, strconv.Itoa(pids[c]), "root", p))
			if err != nil {
				continue // not in this container's image
			}
			if seen[id] {
				continue
			}
			seen[id] = true
			readers = append(readers, policy.Reader{Exe: id, Path: p, Container: c})
		}
	}
	return policy.Watch{
		Dir: dir, Dev: dev, Enforce: enforce, Readers: readers,
		Namespace: pod.Namespace, Pod: pod.Name, PodUID: string(pod.UID),
	}, unresolved, nil
}

// ReaderPaths parses sidekey.io/allowed-readers (a comma list of absolute executable
// paths) and adds the agent's own path. Relative and empty entries are dropped.
func ReaderPaths(annotation string) []string {
	out := []string{spec.AgentPath}
	for _, p := range strings.Split(annotation, ",") {
		p = strings.TrimSpace(p)
		if !strings.HasPrefix(p, "/") {
			continue
		}
		p = filepath.Clean(p)
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// containerPIDs maps each running container of pod to one of its processes, and lists
// the running containers.
func (w *Watcher) containerPIDs(pod *corev1.Pod) (map[string]int, []string) {
	byID := map[string]string{}
	var running []string
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for _, st := range list {
			if st.State.Running == nil || st.ContainerID == "" {
				continue
			}
			_, id, ok := strings.Cut(st.ContainerID, "://")
			if !ok || id == "" {
				continue
			}
			byID[id] = st.Name
			running = append(running, st.Name)
		}
	}
	out := map[string]int{}
	if len(byID) == 0 {
		return out, running
	}
	ents, err := os.ReadDir(w.cfg.ProcRoot)
	if err != nil {
		w.log.Warn("scan processes", "err", err)
		return out, running
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(w.cfg.ProcRoot, e.Name(), "cgroup"))
		if err != nil {
			continue
		}
		for _, id := range ContainerIDs(string(b)) {
			if name, ok := byID[id]; ok {
				if _, done := out[name]; !done {
					out[name] = pid
				}
			}
		}
		if len(out) == len(byID) {
			break
		}
	}
	return out, running
}

// noteRoot remembers the device of a container's root filesystem (its overlay mount), so
// that ContainerOf can name the container of a reader that is already gone (killed in
// enforce mode) from the device of its executable.
func (w *Watcher) noteRoot(pod *corev1.Pod, container string, pid int) {
	root, err := bpf.StatID(filepath.Join(w.cfg.ProcRoot, strconv.Itoa(pid), "root"))
	if err != nil {
		return
	}
	host, err := bpf.StatID(filepath.Join(w.cfg.ProcRoot, "1", "root"))
	if err == nil && host.Dev == root.Dev {
		return // a container sharing the host's root filesystem: the device names nothing
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.roots == nil {
		w.roots = map[uint32]containerRef{}
	}
	w.roots[root.Dev] = containerRef{podUID: string(pod.UID), name: container}
}

type containerRef struct{ podUID, name string }

// ContainerOf names the container of pod podUID that process pid, running executable
// exe, is in: from the process's cgroup while it lives, else from the root filesystem
// the executable is on. It returns "" when unknown; a container of another pod is named
// namespace/pod/container.
func (w *Watcher) ContainerOf(pid uint32, exe bpf.FileID, podUID string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	name := func(p *corev1.Pod, container string) string {
		if string(p.UID) == podUID {
			return container
		}
		return p.Namespace + "/" + p.Name + "/" + container
	}
	if b, err := os.ReadFile(filepath.Join(w.cfg.ProcRoot, strconv.Itoa(int(pid)), "cgroup")); err == nil {
		ids := ContainerIDs(string(b))
		// The reader may sit in another pod of the node (a hostPath, a /proc/<pid>/root
		// walk): look at every known pod.
		for _, p := range w.pods {
			for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses, p.Status.EphemeralContainerStatuses} {
				for _, st := range list {
					_, id, _ := strings.Cut(st.ContainerID, "://")
					if id != "" && slices.Contains(ids, id) {
						return name(p, st.Name)
					}
				}
			}
		}
	}
	// Gone (killed in enforce mode) or not in a container's cgroup: the executable's
	// root filesystem still names its container.
	if ref, ok := w.roots[exe.Dev]; ok {
		if p := w.pods[ref.podUID]; p != nil {
			return name(p, ref.name)
		}
	}
	return ""
}

// ContainerIDs extracts the container IDs named in a /proc/<pid>/cgroup file: path
// components of 64 hex digits, bare (cgroupfs driver) or wrapped as
// <runtime>-<id>.scope (systemd driver).
func ContainerIDs(cgroupFile string) []string {
	var ids []string
	for _, line := range strings.Split(cgroupFile, "\n") {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, comp := range strings.Split(parts[2], "/") {
			comp = strings.TrimSuffix(comp, ".scope")
			if i := strings.LastIndexByte(comp, '-'); i >= 0 {
				comp = comp[i+1:]
			}
			if isContainerID(comp) && !slices.Contains(ids, comp) {
				ids = append(ids, comp)
			}
		}
	}
	return ids
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
