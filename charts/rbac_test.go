package charts

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/sidekey/sidekey/internal/testenv"
)

// TestWebhookRBAC installs the chart with helm into a real kube-apiserver, then runs the real
// `sidekey webhook` as the chart's ServiceAccount (a token from the TokenRequest API, so the
// chart's RBAC is all it has), exactly with the self-managed TLS flags the Deployment passes.
// It must fill the Secret the chart created empty and publish the caBundle of the chart's
// MutatingWebhookConfiguration: the least-privilege Role and ClusterRole are enough.
func TestWebhookRBAC(t *testing.T) {
	cfg := testenv.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const ns = "sidekey-rbac"
	kc := testenv.Kubeconfig(t, cfg)
	if out, err := helm(t, "install", release, chartDir, "--kubeconfig", kc, "--namespace", ns, "--create-namespace",
		"--set", "webhook.replicas=1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const sa, secret, mwc = "sidekey-webhook", "sidekey-webhook-tls", "sidekey-webhook-" + ns
	saKubeconfig := serviceAccountKubeconfig(ctx, t, cfg, admin, ns, sa)
	bin := buildSidekey(t)
	health := testenv.FreePort(t)
	// The flags of templates/webhook-deployment.yaml in self-managed mode, plus where to listen
	// and which API server to use.
	webhook := exec.Command(bin, "webhook", "--kubeconfig", saKubeconfig, "--namespace", ns,
		"--listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "--health-addr", fmt.Sprintf("127.0.0.1:%d", health),
		"--metrics-addr", "", "--service-name", "sidekey-webhook", "--tls-self-managed", "--tls-secret", secret,
		"--webhook-config", mwc, "--native-sidecars", "auto")
	var logs bytes.Buffer
	webhook.Stdout, webhook.Stderr = &logs, &logs
	if err := webhook.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = webhook.Process.Kill(); _ = webhook.Wait() }()

	for {
		s, serr := admin.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{})
		m, merr := admin.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, mwc, metav1.GetOptions{})
		ready := false
		if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", health)); err == nil {
			ready = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
		if serr == nil && merr == nil && len(s.Data["ca.crt"]) > 0 && len(s.Data["tls.crt"]) > 0 &&
			len(m.Webhooks) == 1 && len(m.Webhooks[0].ClientConfig.CABundle) > 0 && ready {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("webhook with the chart's RBAC did not fill secret %s/%s and the caBundle of %s (secret err %v, config err %v, ready %v); its log:\n%s",
				ns, secret, mwc, serr, merr, ready, logs.String())
		case <-time.After(500 * time.Millisecond):
		}
	}
	if bytes.Contains(logs.Bytes(), []byte("forbidden")) {
		t.Errorf("the webhook was refused something by RBAC:\n%s", logs.String())
	}
	if os.Getenv("SIDEKEY_TEST_VERBOSE") != "" {
		t.Logf("webhook log:\n%s", logs.String())
	}
}

// TestProbeRBAC runs the real `sidekey probe --kubernetes` as the chart's probe
// ServiceAccount: it must list and watch its node's pods without being refused, and the
// account may post Events (what it does on a flagged read) and nothing on Secrets.
func TestProbeRBAC(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the probe loads BPF programs")
	}
	cfg := testenv.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const ns, sa = "sidekey-probe-rbac", "sidekey-probe"
	kc := testenv.Kubeconfig(t, cfg)
	if out, err := helm(t, "install", release, chartDir, "--kubeconfig", kc, "--namespace", ns, "--create-namespace",
		"--set", "probe.enabled=true"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		group, resource, verb string
		want                  bool
	}{
		{"", "pods", "list", true}, {"", "pods", "watch", true}, {"", "events", "create", true},
		{"events.k8s.io", "events", "create", true}, {"", "secrets", "get", false}, {"", "pods", "delete", false},
	} {
		r, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: "system:serviceaccount:" + ns + ":" + sa, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "default", Group: tt.group, Resource: tt.resource, Verb: tt.verb}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != tt.want {
			t.Errorf("probe may %s %s.%s: %v; want %v", tt.verb, tt.resource, tt.group, r.Status.Allowed, tt.want)
		}
	}
	probe := exec.Command(buildSidekey(t), "probe", "--kubernetes", "--node-name", "node-1", "--kubelet-root", t.TempDir(),
		"--kubeconfig", serviceAccountKubeconfig(ctx, t, cfg, admin, ns, sa), "--attach", "tracepoint")
	var logs bytes.Buffer
	probe.Stdout, probe.Stderr = &logs, &logs
	if err := probe.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = probe.Process.Kill(); _ = probe.Wait() }()
	deadline := time.Now().Add(90 * time.Second)
	for !bytes.Contains(logs.Bytes(), []byte("ready")) {
		if time.Now().After(deadline) || probe.ProcessState != nil {
			t.Fatalf("probe not ready; its log:\n%s", logs.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // a pod list and watch round
	if bytes.Contains(logs.Bytes(), []byte("forbidden")) {
		t.Errorf("the probe was refused something by RBAC:\n%s", logs.String())
	}
}

// serviceAccountKubeconfig writes a kubeconfig that authenticates as ns/sa with a token from
// the TokenRequest API: the account's RBAC is all a client using it has.
func serviceAccountKubeconfig(ctx context.Context, t *testing.T, cfg *rest.Config, admin kubernetes.Interface, ns, sa string) string {
	t.Helper()
	tok, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", ns, sa, err)
	}
	p := filepath.Join(t.TempDir(), sa+".kubeconfig")
	kcfg := clientcmdapi.NewConfig()
	kcfg.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kcfg.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	kcfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: sa}
	kcfg.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kcfg, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// buildSidekey builds cmd/sidekey into a temporary directory.
func buildSidekey(t *testing.T) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "sidekey")
	build := exec.Command("go", "build", "-o", bin, "./cmd/sidekey")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/sidekey: %v\n%s", err, out)
	}
	return bin
}

func ptr[T any](v T) *T { return &v }
