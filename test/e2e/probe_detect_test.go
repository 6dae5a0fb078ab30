package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/test/cluster"
	"github.com/sidekey/sidekey/test/deploy"
)

// Event reasons the probe posts on a pod (bpf/kube).
const (
	reasonFlagged = "SecretReadFlagged"
	reasonDenied  = "SecretReadDenied"
)

// appReader reads the secret every second, as an allowed reader (/bin/busybox in the app image).
const appReader = `n=0; while :; do n=$((n+1)); if sha256sum ` + secretFile + ` >/dev/null; then echo "app read $n ok"; else echo "app read $n failed exit=$?"; fi; sleep 1; done`

// intruderReader reads the secret every second with a busybox that is not an allowed reader;
// it logs how much it got, never what.
const intruderReader = `while :; do if v=$(cat ` + secretFile + `); then echo "intruder read ${#v} bytes"; else echo "intruder denied exit=$?"; fi; sleep 1; done`

// testProbe: the chart's probe DaemonSet pod watches the pod's tmpfs. A second container that
// is not an allowed reader reads the secret: in audit mode an Event on the pod names it; in
// enforce mode it is stopped before it gets the data, while the app keeps reading.
func (e *env) testProbe(t *testing.T) {
	for _, mode := range []string{"audit", "enforce"} {
		t.Run(mode, func(t *testing.T) {
			ns := e.c.Namespace(t, "probe-"+mode)
			value := randomValue(t)
			pod := e.app(t, ns, value, map[string]string{
				spec.AnnotationAllowedReaders: "/bin/busybox",
				spec.AnnotationProbe:          mode,
			}, appReader)
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
				Name: "intruder", Image: IntruderImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", intruderReader},
			})
			p := e.create(t, pod)
			running := e.wait(t, p, 90*time.Second, cluster.Running("intruder"))
			e.waitLog(t, running, "app", "app read 1 ok", 30*time.Second)

			reason := reasonFlagged
			if mode == "enforce" {
				reason = reasonDenied
			}
			ev := e.waitEvent(t, running, reason, 60*time.Second)
			for _, want := range []string{"container intruder", "/usr/local/bin/busybox", "db-password"} {
				if !strings.Contains(ev.Message, want) {
					t.Errorf("event %s message %q; want it to name %q", reason, ev.Message, want)
				}
			}
			if mode == "audit" {
				e.waitLog(t, running, "intruder", fmt.Sprintf("intruder read %d bytes", len(value)), 10*time.Second)
				checkNotLeaked(t, e.c, running, value)
				return
			}
			// Enforce: the intruder's reader is killed (exit 137) and gets nothing, from the first
			// denial on; the app keeps reading.
			log := e.waitLog(t, running, "intruder", "intruder denied exit=137", 30*time.Second)
			appBefore := countLines(t, running, "app", "ok")
			time.Sleep(4 * time.Second)
			log, _ = cluster.ContainerLog(running, "intruder")
			after := log[strings.Index(log, "intruder denied"):]
			if strings.Contains(after, "intruder read") {
				t.Errorf("intruder read the secret after it was first denied:\n%s", after)
			}
			if appAfter := countLines(t, running, "app", "ok"); appAfter <= appBefore {
				t.Errorf("app reads went from %d to %d in 4s while the intruder was denied; want the app to keep reading", appBefore, appAfter)
			}
			if l, _ := cluster.ContainerLog(running, "app"); strings.Contains(l, "failed") {
				t.Errorf("an allowed read by the app failed:\n%s", l)
			}
			checkNotLeaked(t, e.c, running, value)
		})
	}
}

func (e *env) waitEvent(t *testing.T, p *corev1.Pod, reason string, d time.Duration) corev1.Event {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		evs, err := e.c.Client.CoreV1().Events(p.Namespace).List(context.Background(), metav1.ListOptions{
			FieldSelector: "involvedObject.name=" + p.Name + ",reason=" + reason,
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs.Items {
			if ev.InvolvedObject.UID == p.UID {
				return ev
			}
		}
		if time.Now().After(deadline) {
			probeLog := ""
			if e.sk.Probe != nil {
				probeLog, _ = cluster.ContainerLog(e.sk.Probe, "probe")
			}
			t.Fatalf("no %s event on pod %s/%s after %s\n%s\nprobe log:\n%s", reason, p.Namespace, p.Name, d,
				e.c.Describe(context.Background(), p), lastLines(probeLog, 30))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func countLines(t *testing.T, p *corev1.Pod, container, substr string) int {
	t.Helper()
	log, err := cluster.ContainerLog(p, container)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(log, substr)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// testDetectorGate: `sidekey detect` is the gate in front of the node. It passes the images
// we run (sidekey, sidekey-agent, the test app), rejects an image whose build leaked a token
// into a deleted layer file and a build argument, naming each with its layer, and the gate
// then does not import it; the same app built right passes, is imported and runs.
func (e *env) testDetectorGate(t *testing.T, imgs deploy.Images) {
	dir := filepath.Join(e.c.Dir, "images", "gate")
	app, err := cluster.BusyboxImage(nil, []string{"sh"})
	if err != nil {
		t.Fatal(err)
	}
	appArchive := writeArchive(t, dir, cluster.AppImage, app)
	for _, a := range []string{imgs.Sidekey, imgs.Agent, appArchive} {
		r, code, err := deploy.Detect(e.cli, a)
		if err != nil || code != 0 {
			t.Errorf("detect %s = exit %d, %v; want 0 (clean): %+v", filepath.Base(a), code, err, r)
		}
	}

	leaky, leak, err := deploy.LeakyImage()
	if err != nil {
		t.Fatal(err)
	}
	const leakyRef, cleanRef = "sidekey.test/leaky:e2e", "sidekey.test/clean:e2e"
	r, code, err := deploy.Detect(e.cli, writeArchive(t, dir, leakyRef, leaky))
	if err != nil || code != 1 {
		t.Fatalf("detect leaky image = exit %d, %v; want 1 (findings)", code, err)
	}
	var fileAt, argAt []int
	for _, f := range r.Findings {
		layer := -1
		if f.LayerIndex != nil {
			layer = *f.LayerIndex
		}
		switch {
		case f.Status == "deleted" && strings.TrimPrefix(f.Path, "/") == strings.TrimPrefix(leak.File, "/"):
			fileAt = append(fileAt, layer)
		case f.Status == "metadata" && f.Source == "config" && f.Rule == "github-pat":
			argAt = append(argAt, layer)
		}
	}
	if !containsInt(fileAt, leak.FileLayer) {
		t.Errorf("findings for the deleted %s in layers %v; want layer %d; report: %+v", leak.File, fileAt, leak.FileLayer, r.Findings)
	}
	// The build argument is in the config's history; the detector names the layer that the
	// history entry's RUN made.
	if !containsInt(argAt, leak.ArgLayer) {
		t.Errorf("findings for the build-argument token in layers %v; want one in the config history naming layer %d; report: %+v", argAt, leak.ArgLayer, r.Findings)
	}
	if imported(t, e.c, leakyRef) {
		t.Errorf("the rejected image %s is in containerd", leakyRef)
	}

	clean, err := deploy.CleanImage()
	if err != nil {
		t.Fatal(err)
	}
	cleanArchive := writeArchive(t, dir, cleanRef, clean)
	if r, code, err := deploy.Detect(e.cli, cleanArchive); err != nil || code != 0 {
		t.Fatalf("detect clean image = exit %d, %v; want 0: %+v", code, err, r)
	}
	if err := e.c.ImportImages(cleanArchive); err != nil {
		t.Fatal(err)
	}
	ns := e.c.Namespace(t, "gate")
	p := e.create(t, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "clean", Namespace: ns},
		Spec: corev1.PodSpec{
			NodeName: cluster.NodeName, RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "app", Image: cleanRef, ImagePullPolicy: corev1.PullNever}},
		},
	})
	done := e.wait(t, p, 60*time.Second, cluster.Phase(corev1.PodSucceeded))
	e.waitLog(t, done, "app", "app ready", 10*time.Second)
}

func writeArchive(t *testing.T, dir, ref string, img v1.Image) string {
	t.Helper()
	p, err := cluster.WriteImage(dir, ref, img)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func imported(t *testing.T, c *cluster.Cluster, ref string) bool {
	t.Helper()
	out, err := exec.Command("ctr", "-a", c.ContainerdSocket, "-n", "k8s.io", "images", "ls", "-q").Output()
	if err != nil {
		t.Fatalf("ctr images ls: %v", err)
	}
	for _, l := range strings.Fields(string(out)) {
		if strings.HasSuffix(l, ref) {
			return true
		}
	}
	return false
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
