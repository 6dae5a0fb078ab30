// Package deploy installs sidekey on a test cluster the way a user would: the images that
// `make images` builds (hack/images), imported into the node's containerd, and the Helm chart
// (charts/sidekey) installed with the real helm binary. The webhook runs as a host-network pod
// that the API server calls by URL (webhook.hostNetwork, webhook.url; the serving certificate
// is a Secret signed by the cluster CA, webhook.tls.mode secret), the probe as the chart's
// DaemonSet pod.
package deploy

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sidekey/sidekey/internal/testenv"
	"github.com/sidekey/sidekey/test/cluster"
)

// Version is the tag the test images carry.
const Version = "e2e"

// Image references, as hack/images names them.
var (
	Image      = "ghcr.io/sidekey/sidekey:" + Version
	AgentImage = "ghcr.io/sidekey/sidekey-agent:" + Version
)

// Images are the archives hack/images wrote.
type Images struct {
	Sidekey string // docker-archive of Image
	Agent   string // docker-archive of AgentImage
	Dir     string
}

// BuildImages runs hack/images (what `make images` runs) into dir.
func BuildImages(t testing.TB, dir string) Images {
	t.Helper()
	repo, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("go", "run", "./hack/images", "-version", Version, "-out", dir)
	cmd.Dir = repo
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("deploy: build images (go run ./hack/images): %v\n%s", err, out)
	}
	t.Logf("deploy: built %s and %s in %s", Image, AgentImage, time.Since(start).Round(100*time.Millisecond))
	return Images{Sidekey: filepath.Join(dir, "sidekey.tar"), Agent: filepath.Join(dir, "sidekey-agent.tar"), Dir: dir}
}

// Options of Install.
type Options struct {
	Images Images
	// Probe deploys the probe DaemonSet, allowed to enforce.
	Probe bool
}

// Sidekey is sidekey installed on a cluster.
type Sidekey struct {
	Namespace  string
	Release    string
	WebhookURL string
	Webhook    *corev1.Pod
	Probe      *corev1.Pod // nil unless Options.Probe
}

// Install imports the images, installs the chart with helm and runs its pods; it returns once
// the webhook is ready (and the probe runs). The release is uninstalled with the cluster.
func Install(t testing.TB, c *cluster.Cluster, o Options) *Sidekey {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	for _, a := range []string{o.Images.Sidekey, o.Images.Agent} {
		if err := c.ImportImages(a); err != nil {
			t.Fatalf("deploy: %v", err)
		}
	}
	s := &Sidekey{Namespace: "sidekey-system", Release: "sidekey"}
	if err := c.CreateNamespace(ctx, s.Namespace); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	ports, err := freePorts(t, 4)
	if err != nil {
		t.Fatal(err)
	}
	s.WebhookURL = fmt.Sprintf("https://127.0.0.1:%d/mutate", ports[0])
	cert, key, ca, err := c.IssueServingCert("sidekey-webhook", "127.0.0.1")
	if err != nil {
		t.Fatalf("deploy: webhook certificate: %v", err)
	}
	tlsSecret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "sidekey-webhook-tls", Namespace: s.Namespace},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: cert, corev1.TLSPrivateKeyKey: key},
	}
	if _, err := c.Client.CoreV1().Secrets(s.Namespace).Create(ctx, tlsSecret, metav1.CreateOptions{}); err != nil {
		t.Fatalf("deploy: create webhook TLS secret: %v", err)
	}
	repo, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]any{
		"fullnameOverride": "sidekey",
		"image":            map[string]any{"tag": Version, "pullPolicy": "Never"},
		"agent":            map[string]any{"image": map[string]any{"tag": Version}},
		"vault":            map[string]any{"addr": c.VaultAddr},
		"webhook": map[string]any{
			"replicas":            1,
			"hostNetwork":         true,
			"url":                 s.WebhookURL,
			"port":                ports[0],
			"healthPort":          ports[1],
			"metricsPort":         ports[2],
			"timeoutSeconds":      10,
			"tls":                 map[string]any{"mode": "secret", "secretName": tlsSecret.Name, "caBundle": base64.StdEncoding.EncodeToString(ca)},
			"podDisruptionBudget": map[string]any{"enabled": false},
		},
		"probe": map[string]any{
			"enabled":      o.Probe,
			"allowEnforce": true,
			"kubeletRoot":  c.KubeletRoot,
			"metricsPort":  ports[3],
		},
	}
	b, err := yaml.Marshal(values)
	if err != nil {
		t.Fatal(err)
	}
	valuesFile := filepath.Join(c.Dir, "sidekey-values.yaml")
	if err := os.WriteFile(valuesFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"install", s.Release, filepath.Join(repo, "charts", "sidekey"), "--namespace", s.Namespace, "--values", valuesFile}
	if err := Helm(t, c, args...); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	pods, err := c.RunWorkloads(ctx, s.Namespace)
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	for _, p := range pods {
		switch p.Labels["app.kubernetes.io/component"] {
		case "webhook":
			s.Webhook, err = c.WaitPod(ctx, s.Namespace, p.Name, ready("webhook"))
		case "probe":
			s.Probe, err = c.WaitPod(ctx, s.Namespace, p.Name, cluster.Running("probe"))
		}
		if err != nil {
			t.Fatalf("deploy: %v", err)
		}
	}
	if s.Webhook == nil || (o.Probe && s.Probe == nil) {
		t.Fatalf("deploy: the chart made no webhook pod (or no probe pod); pods: %v", pods)
	}
	t.Logf("deploy: helm release %s/%s installed, webhook ready at %s, in %s", s.Namespace, s.Release, s.WebhookURL, time.Since(start).Round(100*time.Millisecond))
	return s
}

// Helm runs the cached helm binary against the cluster, with its caches in the cluster's dir.
func Helm(t testing.TB, c *cluster.Cluster, args ...string) error {
	t.Helper()
	home := filepath.Join(c.Dir, "helm")
	cmd := exec.Command(testenv.Bin(t, "helm"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig,
		"HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("helm %s: %w\n%s", strings.Join(args[:min(2, len(args))], " "), err, out)
	}
	return nil
}

// ready is a WaitPod condition: the container runs and is ready.
func ready(container string) func(*corev1.Pod) (bool, error) {
	return func(p *corev1.Pod) (bool, error) {
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("phase Failed")
		}
		for _, s := range p.Status.ContainerStatuses {
			if s.Name == container {
				return s.Ready, nil
			}
		}
		return false, nil
	}
}

func freePorts(t testing.TB, n int) ([]int, error) {
	var out []int
	seen := map[int]bool{}
	for len(out) < n {
		p := testenv.FreePort(t)
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// CLI extracts the sidekey binary from the sidekey image into dir and returns its path, so the
// tests run the very binary the images carry.
func CLI(t testing.TB, imgs Images, dir string) string {
	t.Helper()
	img, err := tarball.ImageFromPath(imgs.Sidekey, nil)
	if err != nil {
		t.Fatalf("deploy: read %s: %v", imgs.Sidekey, err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("deploy: no /sidekey in %s: %v", imgs.Sidekey, err)
		}
		if strings.TrimPrefix(h.Name, "/") != "sidekey" {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "sidekey")
		f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, tr); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return p
	}
}

// Report is the part of `sidekey detect --format json` the tests read (never the secret).
type Report struct {
	Image    string `json:"image"`
	Findings []struct {
		Rule       string `json:"rule"`
		Source     string `json:"source"`
		Path       string `json:"path"`
		Status     string `json:"status"`
		LayerIndex *int   `json:"layer_index"`
		CreatedBy  string `json:"created_by"`
	} `json:"findings"`
}

// Detect runs `sidekey detect image docker-archive:ARCHIVE --format json` and returns its report
// and exit code (0 clean, 1 findings, 2 the scan failed).
func Detect(cli, archive string) (*Report, int, error) {
	cmd := exec.Command(cli, "detect", "image", "docker-archive:"+archive, "--format", "json", "--progress", "never", "--color", "never")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return nil, -1, fmt.Errorf("run sidekey detect: %w", err)
		}
		code = ee.ExitCode()
	}
	var r Report
	if jerr := json.Unmarshal([]byte(stdout.String()), &r); jerr != nil {
		return nil, code, fmt.Errorf("sidekey detect %s exited %d with no JSON report (%v): %s", archive, code, jerr, stderr.String())
	}
	return &r, code, nil
}
