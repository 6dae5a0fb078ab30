// Package e2e runs sidekey where users run it: real pods on a real kubelet (test/cluster),
// the images `make images` builds, installed by the Helm chart (test/deploy), against a real
// Vault. Each subtest of TestSidekeyOnANode is one end-to-end test of issue 8; run one with
// go test ./test/e2e -run 'TestSidekeyOnANode/rotation'.
package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/test/cluster"
	"github.com/sidekey/sidekey/test/deploy"
)

// IntruderImage has busybox at /usr/local/bin/busybox and no /bin/busybox, so an allowed
// reader /bin/busybox does not resolve in it.
const IntruderImage = "sidekey.test/intruder:e2e"

// secretFile is where the apps below find their secret.
const secretFile = "/run/secrets/sidekey/db-password"

type env struct {
	c   *cluster.Cluster
	sk  *deploy.Sidekey
	cli string
}

func TestSidekeyOnANode(t *testing.T) {
	c := cluster.Start(t)
	imgs := deploy.BuildImages(t, filepath.Join(c.Dir, "images", "sidekey"))
	e := &env{c: c, cli: deploy.CLI(t, imgs, filepath.Join(c.Dir, "bin"))}
	intruder, err := cluster.BusyboxImageAt("/usr/local/bin/busybox", nil, []string{"sh"})
	if err != nil {
		t.Fatal(err)
	}
	importImage(t, c, IntruderImage, intruder)

	// The detector is the gate in front of the node: it runs first, on the images we deploy.
	t.Run("detector-gate", func(t *testing.T) { e.testDetectorGate(t, imgs) })
	e.sk = deploy.Install(t, c, deploy.Options{Images: imgs, Probe: true})
	t.Run("injection", e.testInjection)
	t.Run("rotation", e.testRotation)
	t.Run("init-only-job", e.testInitOnlyJob)
	t.Run("probe", e.testProbe)
	t.Run("vault-down", e.testVaultDown) // last: it restarts Vault
}

// appScript prints the mode and owner of the secret file and a hash of it, and again on SIGHUP.
const appScript = `F=` + secretFile + `
show() { echo "sha256 $(sha256sum $F | cut -d' ' -f1)"; }
trap 'echo reloaded; show' HUP
stat -c 'file mode=%a uid=%u gid=%g' $F
show
while :; do sleep 1 & wait $!; done`

// app sets up an app: a service account, a Vault role that may read secret/data/<ns>/*, and
// the secret; it returns the pod (not yet created) annotated to get it at secretFile.
func (e *env) app(t testing.TB, ns, value string, ann map[string]string, script string) *corev1.Pod {
	t.Helper()
	if err := e.c.CreateServiceAccount(context.Background(), ns, "app"); err != nil {
		t.Fatal(err)
	}
	e.vaultApp(t, ns, value)
	return appPod(ns, ann, script)
}

// appPod is a pod of the test app (uid 1000, fsGroup 2000) running script, annotated to get
// secret/data/<ns>/db#password from Vault at secretFile, with the extra annotations ann.
func appPod(ns string, ann map[string]string, script string) *corev1.Pod {
	a := map[string]string{
		spec.AnnotationInject:           "true",
		"sidekey.io/vault-role":         ns,
		"sidekey.io/secret.db-password": "vault:secret/data/" + ns + "/db#password",
	}
	for k, v := range ann {
		a[k] = v
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns, Annotations: a},
		Spec: corev1.PodSpec{
			NodeName:           cluster.NodeName,
			ServiceAccountName: "app",
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](1000), FSGroup: ptr.To[int64](2000),
			},
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			Containers: []corev1.Container{{
				Name: "app", Image: cluster.AppImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", script},
			}},
		},
	}
}

// vaultApp writes the role and the secret of namespace ns (again after a Vault restart).
func (e *env) vaultApp(t testing.TB, ns, value string) {
	t.Helper()
	ctx := context.Background()
	if err := e.c.VaultRole(ctx, ns, ns, "app", "secret/data/"+ns+"/*"); err != nil {
		t.Fatal(err)
	}
	e.putSecret(t, ns, value)
}

func (e *env) putSecret(t testing.TB, ns, value string) {
	t.Helper()
	vc, err := e.c.VaultClient()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vc.KVv2("secret").Put(context.Background(), ns+"/db", map[string]any{"password": value}); err != nil {
		t.Fatalf("vault: put secret/%s/db: %v", ns, err)
	}
}

func (e *env) create(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	p, err := e.c.Client.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	t.Cleanup(func() {
		_ = e.c.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})
	return p
}

func (e *env) wait(t *testing.T, p *corev1.Pod, d time.Duration, cond func(*corev1.Pod) (bool, error)) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	got, err := e.c.WaitPod(ctx, p.Namespace, p.Name, cond)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func (e *env) waitLog(t *testing.T, p *corev1.Pod, container, want string, d time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	log, err := e.c.WaitLog(ctx, p, container, want)
	if err != nil {
		t.Fatalf("%v\n%s", err, e.c.Describe(context.Background(), p))
	}
	return log
}

// testInjection: an annotated pod gets its Vault KV v2 secret from the native sidecar, which
// starts before the app; the app reads it (its log shows the hash), with the owner and mode
// the pod asks for, on a tmpfs; the value is nowhere in the pod object.
func (e *env) testInjection(t *testing.T) {
	ns := e.c.Namespace(t, "inject")
	value := randomValue(t)
	p := e.create(t, e.app(t, ns, value, nil, appScript))
	running := e.wait(t, p, 90*time.Second, cluster.Running("app"))

	if len(running.Spec.InitContainers) == 0 || running.Spec.InitContainers[0].Name != spec.AgentContainer ||
		running.Spec.InitContainers[0].RestartPolicy == nil || *running.Spec.InitContainers[0].RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("first init container = %+v; want the native sidecar %s (restartPolicy Always)", running.Spec.InitContainers, spec.AgentContainer)
	}
	agent, app := status(running.Status.InitContainerStatuses, spec.AgentContainer), status(running.Status.ContainerStatuses, "app")
	if agent == nil || agent.State.Running == nil || app == nil || app.State.Running == nil {
		t.Fatalf("agent %+v, app %+v; want both running", agent, app)
	}
	if app.State.Running.StartedAt.Before(&agent.State.Running.StartedAt) {
		t.Errorf("app started at %s, before the agent (%s)", app.State.Running.StartedAt, agent.State.Running.StartedAt)
	}
	log := e.waitLog(t, running, "app", "sha256 ", 30*time.Second)
	if want := "file mode=400 uid=1000 gid=2000\nsha256 " + hash(value) + "\n"; !strings.HasPrefix(log, want) {
		t.Errorf("app log = %q; want it to start with %q", log, want)
	}
	host := e.c.VolumePath(running, spec.VolumeName)
	if fs := cluster.MountType(host); fs != "tmpfs" {
		t.Errorf("secret volume %s is %q on the host; want tmpfs", host, fs)
	}
	checkNotLeaked(t, e.c, running, value)
}

// testRotation: a new value in Vault reaches the running pod within the refresh interval; the
// file is replaced atomically (every read sees the old or the new value, never a mix or an
// empty file) and the app gets SIGHUP (it logs the reload and the new hash).
func (e *env) testRotation(t *testing.T) {
	ns := e.c.Namespace(t, "rotate")
	old := randomValue(t)
	p := e.create(t, e.app(t, ns, old, map[string]string{
		"sidekey.io/refresh":   "2s",
		"sidekey.io/on-change": "signal:app:SIGHUP",
	}, appScript))
	running := e.wait(t, p, 90*time.Second, cluster.Running("app"))
	e.waitLog(t, running, "app", "sha256 "+hash(old), 30*time.Second)
	file := filepath.Join(e.c.VolumePath(running, spec.VolumeName), "db-password")
	before := inode(t, file)

	// Watch the file on the host while the value changes in Vault.
	next := randomValue(t)
	stop := make(chan struct{})
	seen := make(chan error, 1)
	go func() {
		var bad error
		for {
			select {
			case <-stop:
				seen <- bad
				return
			default:
			}
			b, err := os.ReadFile(file)
			if err == nil && string(b) != old && string(b) != next && bad == nil {
				bad = fmt.Errorf("read %d bytes that are neither the old nor the new value", len(b))
			}
		}
	}()
	changed := time.Now()
	e.putSecret(t, ns, next)
	log := e.waitLog(t, running, "app", "reloaded\nsha256 "+hash(next), 20*time.Second)
	took := time.Since(changed)
	close(stop)
	if err := <-seen; err != nil {
		t.Errorf("rotation was not atomic: %v", err)
	}
	if after := inode(t, file); after == before {
		t.Errorf("file inode unchanged (%d); want a new file renamed into place", after)
	}
	if took > 10*time.Second {
		t.Errorf("rotation reached the app after %s; want within a few refresh intervals (2s)", took)
	}
	if !strings.Contains(log, "sha256 "+hash(old)) {
		t.Errorf("app log lost the first value's hash: %q", log)
	}
	t.Logf("rotation reached the app %s after the write to Vault", took.Round(10*time.Millisecond))
	checkNotLeaked(t, e.c, running, next)
}

// testInitOnlyJob: a Job's pod gets its secret once, from an init container that exits, and
// completes: nothing keeps it running.
func (e *env) testInitOnlyJob(t *testing.T) {
	ns := e.c.Namespace(t, "job")
	ctx := context.Background()
	value := randomValue(t)
	// The Job object owns the pod; there is no job controller here, so the test creates the
	// pod as it would (ownerReference, restartPolicy Never).
	job, err := e.c.Client.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "migrate", Namespace: ns},
		Spec: batchv1.JobSpec{
			Suspend: ptr.To(true),
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "app", Image: cluster.AppImage}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create job: %v", err)
	}
	pod := e.app(t, ns, value, nil, `echo "sha256 $(sha256sum `+secretFile+` | cut -d' ' -f1)"`)
	pod.Name = "migrate-x7k2p"
	pod.Labels = map[string]string{"batch.kubernetes.io/job-name": job.Name}
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: job.Name, UID: job.UID, Controller: ptr.To(true)}}
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	p := e.create(t, pod)
	done := e.wait(t, p, 90*time.Second, cluster.Phase(corev1.PodSucceeded))

	for _, c := range done.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			t.Errorf("init container %s is a sidecar (restartPolicy Always); a Job's pod wants init-only", c.Name)
		}
	}
	if len(done.Spec.Containers) != 1 {
		t.Errorf("containers = %d; want only the app (no sidecar)", len(done.Spec.Containers))
	}
	log := e.waitLog(t, done, "app", "sha256", 10*time.Second)
	if want := "sha256 " + hash(value) + "\n"; log != want {
		t.Errorf("job log = %q; want %q", log, want)
	}
}

// testVaultDown: with Vault down the agent keeps retrying and the app does not start; once
// Vault is back the pod proceeds. When Vault goes down later, the file stays as it was.
func (e *env) testVaultDown(t *testing.T) {
	ns := e.c.Namespace(t, "down")
	value := randomValue(t)
	pod := e.app(t, ns, value, map[string]string{"sidekey.io/refresh": "1s"}, appScript)
	e.c.Vault.Stop()
	p := e.create(t, pod)

	// The agent runs and retries; the app must not start for a while.
	e.wait(t, p, 60*time.Second, cluster.Created(spec.AgentContainer))
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		cur, err := e.c.Client.CoreV1().Pods(ns).Get(context.Background(), p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if s := status(cur.Status.ContainerStatuses, "app"); s != nil && (s.State.Running != nil || s.State.Terminated != nil) {
			t.Fatalf("app started while Vault was down:\n%s", e.c.Describe(context.Background(), cur))
		}
		time.Sleep(300 * time.Millisecond)
	}

	e.c.RestartVault(t)
	e.vaultApp(t, ns, value)
	running := e.wait(t, p, 90*time.Second, cluster.Running("app"))
	e.waitLog(t, running, "app", "sha256 "+hash(value), 30*time.Second)
	file := filepath.Join(e.c.VolumePath(running, spec.VolumeName), "db-password")

	// Vault goes down later: several refresh intervals pass, the file keeps its value.
	e.c.Vault.Stop()
	time.Sleep(5 * time.Second)
	b, err := os.ReadFile(file)
	if err != nil || string(b) != value {
		t.Errorf("after Vault went down the file holds %d bytes (%v); want the value it had", len(b), err)
	}
	cur := e.wait(t, running, 5*time.Second, cluster.Running("app"))
	if s := status(cur.Status.ContainerStatuses, "app"); s.RestartCount != 0 {
		t.Errorf("app restarted %d times while Vault was down", s.RestartCount)
	}
	e.c.RestartVault(t)
}

func status(list []corev1.ContainerStatus, name string) *corev1.ContainerStatus {
	for i := range list {
		if list[i].Name == name {
			return &list[i]
		}
	}
	return nil
}

// checkNotLeaked fails when the secret value appears in the pod object or its events.
func checkNotLeaked(t *testing.T, c *cluster.Cluster, p *corev1.Pod, value string) {
	t.Helper()
	ctx := context.Background()
	cur, err := c.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := fmt.Sprintf("%+v", cur); strings.Contains(s, value) {
		t.Errorf("the secret value is in the pod object")
	}
	evs, err := c.Client.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs.Items {
		if strings.Contains(ev.Message, value) {
			t.Errorf("the secret value is in event %s: %s", ev.Reason, ev.Name)
		}
	}
}

func randomValue(t *testing.T) string {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "pw-" + hex.EncodeToString(b)
}

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func importImage(t *testing.T, c *cluster.Cluster, ref string, img v1.Image) {
	t.Helper()
	if err := c.ImportImage(ref, img); err != nil {
		t.Fatal(err)
	}
}
