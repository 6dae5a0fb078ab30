// Package demo is `make demo`: a narrated walkthrough of sidekey on a real single-node cluster
// (test/cluster), with the images `make images` builds installed by the Helm chart. It runs
// only when SIDEKEY_DEMO=1 (hack/demo.sh sets it); the same behaviour is tested, quietly, by
// test/e2e.
package demo

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/test/cluster"
	"github.com/sidekey/sidekey/test/deploy"
)

const (
	ns         = "shop"
	podName    = "web"
	mountPath  = "/run/secrets/sidekey"
	intruder   = "sidekey.test/intruder:demo"   // busybox at /usr/local/bin/busybox
	intruder2  = "sidekey.test/intruder-2:demo" // busybox at /opt/tools/busybox
	leakyRef   = "sidekey.test/leaky:demo"
	cleanRef   = "sidekey.test/clean:demo"
	appScriptF = `cd ` + mountPath + `
show() { for f in db-password api-key; do echo "  $f sha256=$(sha256sum $f | cut -c1-16)..."; done; }
trap 'echo "SIGHUP: reloading secrets"; show' HUP
echo "files in ` + mountPath + ` (mode, uid, gid, name):"
for f in *; do stat -c '  %a %u %g %n' "$f"; done
echo "filesystem: $(grep ' ` + mountPath + ` ' /proc/mounts | cut -d' ' -f3)"
show
n=0; while :; do n=$((n+1)); sha256sum db-password >/dev/null && [ $((n % 5)) = 0 ] && echo "still reading db-password (read $n)"; sleep 1 & wait $!; done`
)

var (
	out   = os.Stdout
	step  int
	begin time.Time
)

func say(format string, args ...any) { fmt.Fprintf(out, "    "+format+"\n", args...) }

func title(s string) {
	step++
	fmt.Fprintf(out, "\n\033[1m==> %d. %s\033[0m  (%s)\n", step, s, time.Since(begin).Round(time.Second))
}

func proves(t *testing.T, s string) {
	if t.Failed() {
		fmt.Fprintf(out, "    \033[31m✗ did not show: %s\033[0m\n", s)
		t.FailNow()
	}
	fmt.Fprintf(out, "    \033[32m✓ %s\033[0m\n", s)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		fmt.Fprintf(out, "    \033[31m✗ %v\033[0m\n", err)
		t.FailNow()
	}
}

func TestDemo(t *testing.T) {
	if os.Getenv("SIDEKEY_DEMO") != "1" {
		t.Skip("the demo runs from `make demo` (hack/demo.sh); test/e2e tests the same behaviour")
	}
	begin = time.Now()
	ctx := context.Background()

	title("Start a real single-node cluster: etcd, kube-apiserver, containerd+runc, CNI, kubelet, Vault")
	c := cluster.Start(t)
	say("API server %s, node %s Ready, Vault %s", c.APIServer, cluster.NodeName, c.Vault.Addr)
	proves(t, "a real kubelet runs pods on this machine; nothing is mocked")

	title("Build the sidekey images (go run ./hack/images, as `make images`) and install the Helm chart")
	imgs := deploy.BuildImages(t, filepath.Join(c.Dir, "images", "sidekey"))
	cli := deploy.CLI(t, imgs, filepath.Join(c.Dir, "bin"))
	for _, ref := range []struct {
		ref, at string
	}{{intruder, "/usr/local/bin/busybox"}, {intruder2, "/opt/tools/busybox"}} {
		img, err := cluster.BusyboxImageAt(ref.at, nil, []string{"sh"})
		must(t, err)
		importImage(t, c, ref.ref, img)
	}
	sk := deploy.Install(t, c, deploy.Options{Images: imgs, Probe: true})
	say("helm install %s charts/sidekey -n %s (webhook %s, probe DaemonSet pod %s)", sk.Release, sk.Namespace, sk.WebhookURL, sk.Probe.Name)
	say("webhook pod %s ready; MutatingWebhookConfiguration calls it by URL", sk.Webhook.Name)
	proves(t, "the chart installs the webhook and the probe from the images `make images` builds")

	title("Create the example workload: a pod that asks for two Vault secrets by annotation")
	must(t, c.CreateNamespace(ctx, ns))
	must(t, c.CreateServiceAccount(ctx, ns, "web"))
	must(t, c.VaultRole(ctx, "web", ns, "web", "secret/data/shop/*"))
	vc, err := c.VaultClient()
	must(t, err)
	password, apiKey := "s3cr3t-"+randHex(8), "ak-"+randHex(12)
	_, err = vc.KVv2("secret").Put(ctx, "shop/db", map[string]any{"password": password})
	must(t, err)
	_, err = vc.KVv2("secret").Put(ctx, "shop/api", map[string]any{"key": apiKey})
	must(t, err)
	say("vault kv put secret/shop/db password=…  and  secret/shop/api key=…")
	ann := map[string]string{
		"sidekey.io/inject":             "true",
		"sidekey.io/vault-role":         "web",
		"sidekey.io/secret.db-password": "vault:secret/data/shop/db#password",
		"sidekey.io/secret.api-key":     "vault:secret/data/shop/api#key",
		"sidekey.io/refresh":            "2s",
		"sidekey.io/on-change":          "signal:app:SIGHUP",
		"sidekey.io/allowed-readers":    "/bin/busybox",
		"sidekey.io/probe":              "audit",
	}
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		say("  %s: %s", k, ann[k])
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podName, Namespace: ns, Annotations: ann},
		Spec: corev1.PodSpec{
			NodeName: cluster.NodeName, ServiceAccountName: "web",
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](1000), FSGroup: ptr.To[int64](2000)},
			Containers: []corev1.Container{{
				Name: "app", Image: cluster.AppImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", appScriptF},
			}},
		},
	}
	created := time.Now()
	_, err = c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	must(t, err)
	running := waitPod(t, c, podName, cluster.Running("app"))
	say("pod %s/%s: app running %s after create", ns, podName, time.Since(created).Round(10*time.Millisecond))
	proves(t, "an annotated pod starts with its secrets; the app needs no Vault client")

	title("What the webhook injected (stored pod spec)")
	ic := running.Spec.InitContainers[0]
	say("init container %q image %s restartPolicy %s (a native sidecar: starts first, keeps running)", ic.Name, ic.Image, *ic.RestartPolicy)
	sc := ic.SecurityContext
	say("  runAsUser %d, runAsNonRoot %t, readOnlyRootFilesystem %t, capabilities drop %v", *sc.RunAsUser, *sc.RunAsNonRoot, *sc.ReadOnlyRootFilesystem, sc.Capabilities.Drop)
	for _, v := range running.Spec.Volumes {
		if v.Name == spec.VolumeName {
			say("volume %q: emptyDir medium %q sizeLimit %s (tmpfs)", v.Name, v.EmptyDir.Medium, v.EmptyDir.SizeLimit)
		}
	}
	for _, e := range ic.Env {
		if e.Name == spec.EnvVar {
			var s spec.Spec
			must(t, json.Unmarshal([]byte(e.Value), &s))
			say("agent spec (%s): mode %s, refresh %s, on change %s %s %s", spec.EnvVar, s.Mode, time.Duration(s.Refresh), s.OnChange.Kind, s.OnChange.Container, s.OnChange.Signal)
			for _, sec := range s.Secrets {
				say("  %s/%s mode %s uid %d gid %d <- %s", s.MountPath, sec.File, sec.Mode, *sec.UID, *sec.GID, sec.Source)
			}
		}
	}
	stored, err := json.Marshal(running)
	must(t, err)
	if strings.Contains(string(stored), password) || strings.Contains(string(stored), apiKey) {
		t.Errorf("a secret value is in the stored pod")
	}
	proves(t, "the pod object holds references only, never a secret value")

	title("The files inside the running pod (the app's own log, from /var/log/pods)")
	log := waitLog(t, c, running, "app", "api-key sha256=")
	printLog(log)
	host := c.VolumePath(running, spec.VolumeName)
	say("on the node: %s is %s", host, fsType(host))
	if !strings.Contains(log, "400 1000 2000 db-password") || !strings.Contains(log, "filesystem: tmpfs") ||
		!strings.Contains(log, "db-password sha256="+hash(password)[:16]) || fsType(host) != "tmpfs" {
		t.Errorf("files are not as asked (mode 0400, owner 1000:2000, tmpfs, the Vault value)")
	}
	proves(t, "the secrets are files on a per-pod tmpfs (never on disk), owned by the app's user, mode 0400")

	title("Rotate the database password in Vault")
	newPassword := "s3cr3t-" + randHex(8)
	rotated := time.Now()
	_, err = vc.KVv2("secret").Put(ctx, "shop/db", map[string]any{"password": newPassword})
	must(t, err)
	say("vault kv put secret/shop/db password=…(new)")
	log = waitLog(t, c, running, "app", "db-password sha256="+hash(newPassword)[:16])
	i := strings.Index(log, "SIGHUP")
	if i < 0 {
		t.Errorf("the app got no SIGHUP")
	} else {
		printLog(log[i:])
	}
	say("the app saw the new value %s after the write to Vault (refresh 2s)", time.Since(rotated).Round(10*time.Millisecond))
	proves(t, "the sidecar rewrites the file atomically and signals the app; no restart")

	title("An intruder attaches a debug container to the pod and reads the secret (probe: audit)")
	attach(t, c, "intruder", intruder, "/usr/local/bin/busybox")
	ev := waitEvent(t, c, running, "SecretReadFlagged")
	say("event %s on pod %s/%s: %s", ev.Reason, ns, podName, ev.Message)
	ilog := waitLog(t, c, running, "intruder", "read")
	printLog(ilog)
	proves(t, "the probe names the pod, the container and the executable of a reader that is not allowed")

	title("Switch the pod to enforce (kubectl annotate pod web sidekey.io/probe=enforce) and try again")
	patch := []byte(`{"metadata":{"annotations":{"sidekey.io/probe":"enforce"}}}`)
	_, err = c.Client.CoreV1().Pods(ns).Patch(ctx, podName, types.MergePatchType, patch, metav1.PatchOptions{})
	must(t, err)
	time.Sleep(2 * time.Second) // the probe sees the pod update through its informer
	attach(t, c, "intruder-2", intruder2, "/opt/tools/busybox")
	ev = waitEvent(t, c, running, "SecretReadDenied")
	say("event %s: %s", ev.Reason, ev.Message)
	ilog = waitLog(t, c, running, "intruder-2", "exit")
	printLog(ilog)
	if !strings.Contains(ilog, "exit=137") || strings.Contains(ilog, "got") {
		t.Errorf("the intruder was not stopped before it read")
	}
	before := strings.Count(mustLog(t, running, "app"), "still reading")
	time.Sleep(6 * time.Second)
	after := strings.Count(mustLog(t, running, "app"), "still reading")
	say("meanwhile the app (allowed: /bin/busybox) kept reading: %d -> %d progress lines", before, after)
	if after <= before {
		t.Errorf("the app stopped reading")
	}
	proves(t, "in enforce mode the intruder is killed before the read returns; the app is untouched")

	title("The detector as a gate: a leaky image and a clean one, before they reach the node")
	leaky, leak, err := deploy.LeakyImage()
	must(t, err)
	dir := filepath.Join(c.Dir, "images", "gate")
	leakyTar := writeArchive(t, dir, leakyRef, leaky)
	say("leaky image: layer 1 COPY .env (a GitHub token), layer 2 RUN rm .env with the token as a build argument")
	r, code, err := deploy.Detect(cli, leakyTar)
	must(t, err)
	say("sidekey detect image docker-archive:%s -> exit %d", filepath.Base(leakyTar), code)
	var sawFile, sawArg bool
	for _, f := range r.Findings {
		where := "config"
		if f.LayerIndex != nil {
			where = fmt.Sprintf("layer %d", *f.LayerIndex)
		}
		if f.Source == "config" && f.Path == "History" && f.LayerIndex != nil {
			where = fmt.Sprintf("config history, made layer %d", *f.LayerIndex)
		}
		say("  %-10s %-8s %-8s %s (%s)", f.Rule, f.Status, f.Source, f.Path, where)
		if f.Status == "deleted" && strings.TrimPrefix(f.Path, "/") == strings.TrimPrefix(leak.File, "/") && f.LayerIndex != nil && *f.LayerIndex == leak.FileLayer {
			sawFile = true
		}
		if f.Status == "metadata" && f.Source == "config" && f.LayerIndex != nil && *f.LayerIndex == leak.ArgLayer {
			sawArg = true
		}
	}
	if code != 1 || !sawFile || !sawArg {
		t.Errorf("detect did not reject the leaky image with both findings (exit %d)", code)
	}
	say("gate: not importing %s", leakyRef)
	clean, err := deploy.CleanImage()
	must(t, err)
	cleanTar := writeArchive(t, dir, cleanRef, clean)
	_, code, err = deploy.Detect(cli, cleanTar)
	must(t, err)
	say("sidekey detect image docker-archive:%s -> exit %d (clean); importing it", filepath.Base(cleanTar), code)
	if code != 0 {
		t.Errorf("detect rejected the clean image")
	}
	must(t, c.ImportImages(cleanTar))
	proves(t, "a secret deleted in a later layer or passed as a build argument is still found, with where it is")

	title("Clean up")
	say("t.Cleanup stops the kubelet, containerd, the pods, the API server, etcd and Vault, and removes mounts, bridge, netns (hack/cluster-clean.sh)")
	fmt.Fprintf(out, "\n\033[1mDemo passed in %s.\033[0m\n", time.Since(begin).Round(time.Second))
}

// attach adds an ephemeral container (what kubectl debug does) that mounts the pod's secrets
// and reads one with a busybox at exe; it logs how many bytes it got, never what.
func attach(t *testing.T, c *cluster.Cluster, name, image, exe string) {
	ctx := context.Background()
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	must(t, err)
	script := fmt.Sprintf(`if v=$(%s cat %s/db-password); then echo "intruder read: got ${#v} bytes"; else echo "intruder read: denied, exit=$?"; fi`, exe, mountPath)
	p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{
			Name: name, Image: image, ImagePullPolicy: corev1.PullNever,
			Command:      []string{exe, "sh", "-c", "sleep 1; " + script},
			VolumeMounts: []corev1.VolumeMount{{Name: spec.VolumeName, MountPath: mountPath, ReadOnly: true}},
		},
	})
	_, err = c.Client.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, podName, p, metav1.UpdateOptions{})
	must(t, err)
	say("added debug container %q (image %s) that runs: %s cat %s/db-password", name, image, exe, mountPath)
}

func waitPod(t *testing.T, c *cluster.Cluster, name string, cond func(*corev1.Pod) (bool, error)) *corev1.Pod {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p, err := c.WaitPod(ctx, ns, name, cond)
	must(t, err)
	return p
}

func waitLog(t *testing.T, c *cluster.Cluster, p *corev1.Pod, container, want string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	log, err := c.WaitLog(ctx, p, container, want)
	must(t, err)
	return log
}

func mustLog(t *testing.T, p *corev1.Pod, container string) string {
	log, err := cluster.ContainerLog(p, container)
	must(t, err)
	return log
}

func waitEvent(t *testing.T, c *cluster.Cluster, p *corev1.Pod, reason string) corev1.Event {
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		evs, err := c.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
			FieldSelector: "involvedObject.name=" + p.Name + ",reason=" + reason,
		})
		must(t, err)
		if len(evs.Items) > 0 {
			return evs.Items[len(evs.Items)-1]
		}
		time.Sleep(300 * time.Millisecond)
	}
	must(t, fmt.Errorf("no %s event on pod %s/%s after 45s", reason, p.Namespace, p.Name))
	return corev1.Event{}
}

func printLog(log string) {
	for _, l := range strings.Split(strings.TrimRight(log, "\n"), "\n") {
		fmt.Fprintf(out, "    \033[2m| %s\033[0m\n", l)
	}
}

func importImage(t *testing.T, c *cluster.Cluster, ref string, img v1.Image) {
	must(t, c.ImportImage(ref, img))
}

func writeArchive(t *testing.T, dir, ref string, img v1.Image) string {
	p, err := cluster.WriteImage(dir, ref, img)
	must(t, err)
	return p
}

func fsType(path string) string {
	if fs := cluster.MountType(path); fs != "" {
		return fs
	}
	return "not a mount"
}

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
