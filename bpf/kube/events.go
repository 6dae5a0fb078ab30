package kube

import (
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/sidekey/sidekey/bpf/report"
)

// Event reasons on the pod.
const (
	ReasonFlagged = "SecretReadFlagged"
	ReasonDenied  = "SecretReadDenied"
)

// Events posts flagged reads as Kubernetes Events on the pod owning the tmpfs, at most
// one per (pod, executable, file) per interval; the next one says how many were
// suppressed in between. Messages name the file and the reader, never file contents.
type Events struct {
	recorder    record.EventRecorder
	broadcaster record.EventBroadcaster
	interval    time.Duration
	now         func() time.Time

	mu   sync.Mutex
	last map[eventKey]*eventState
}

type eventKey struct {
	pod, exe, file string
}

type eventState struct {
	at         time.Time
	suppressed uint64
}

// NewEvents returns a reporter posting through client as component sidekey-probe on node.
func NewEvents(client kubernetes.Interface, node string, interval time.Duration) *Events {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &Events{
		recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "sidekey-probe", Host: node}),
		broadcaster: b,
		interval:    interval,
		now:         time.Now,
		last:        map[eventKey]*eventState{},
	}
}

// Report posts r unless an event for the same (pod, exe, file) was posted less than the
// interval ago. It reports whether it posted.
func (e *Events) Report(r report.Record, podUID string) bool {
	if r.Pod == "" {
		return false
	}
	k := eventKey{pod: podUID, exe: r.ExeID + r.Exe, file: r.Path}
	now := e.now()
	e.mu.Lock()
	st := e.last[k]
	if st != nil && now.Sub(st.at) < e.interval {
		st.suppressed += 1 + r.Suppressed
		e.mu.Unlock()
		return false
	}
	var suppressed uint64
	if st != nil {
		suppressed = st.suppressed
	}
	e.last[k] = &eventState{at: now}
	for key, s := range e.last { // forget quiet keys
		if now.Sub(s.at) > 10*e.interval {
			delete(e.last, key)
		}
	}
	e.mu.Unlock()

	reason, verb := ReasonFlagged, "opened"
	if r.Verdict == "deny" {
		reason, verb = ReasonDenied, "was stopped opening"
	}
	who := fmt.Sprintf("%s (comm %q, pid %d, uid %d", r.Exe, r.Comm, r.PID, r.UID)
	if r.Container != "" {
		who += ", container " + r.Container
	}
	who += ")"
	msg := fmt.Sprintf("%s %s secret file %s, not an allowed reader", who, verb, r.Path)
	if n := suppressed + r.Suppressed; n > 0 {
		msg += fmt.Sprintf("; %d similar reads not reported since the last event", n)
	}
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: r.Namespace, Name: r.Pod, UID: types.UID(podUID)}
	e.recorder.Event(ref, corev1.EventTypeWarning, reason, msg)
	return true
}

// Shutdown flushes and stops the event broadcaster.
func (e *Events) Shutdown() { e.broadcaster.Shutdown() }
