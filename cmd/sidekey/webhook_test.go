package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	admregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sidekey/sidekey/injector"
	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/testenv"
)

// TestWebhookCommand runs `sidekey webhook` with self-managed TLS against a real kube-apiserver:
// the command publishes its CA, the API server calls it, health, readiness and metrics answer,
// and cancelling it shuts it down cleanly.
func TestWebhookCommand(t *testing.T) {
	rc := testenv.StartAPIServer(t)
	kubeconfig := testenv.Kubeconfig(t, rc)
	cs := kubernetes.NewForConfigOrDie(rc)
	ctx := t.Context()
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "sidekey-system"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"sidekey.io/injection": "enabled"}}},
	} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	port, health, metrics := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	url := fmt.Sprintf("https://127.0.0.1:%d/mutate", port)
	fail, none := admregv1.Fail, admregv1.SideEffectClassNone
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "sidekey-webhook"},
		Webhooks: []admregv1.MutatingWebhook{{
			Name:         "inject.sidekey.io",
			ClientConfig: admregv1.WebhookClientConfig{URL: &url},
			Rules: []admregv1.RuleWithOperations{{Operations: []admregv1.OperationType{admregv1.Create},
				Rule: admregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"sidekey.io/injection": "enabled"}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	cmd := newWebhookCmd()
	cmd.SetArgs([]string{
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--health-addr", fmt.Sprintf("127.0.0.1:%d", health),
		"--metrics-addr", fmt.Sprintf("127.0.0.1:%d", metrics),
		"--tls-self-managed", "--tls-secret", "sidekey-webhook-tls", "--namespace", "sidekey-system",
		"--service-name", "sidekey-webhook", "--webhook-config", "sidekey-webhook", "--tls-extra-sans", "127.0.0.1",
		"--kubeconfig", kubeconfig, "--vault-addr", "https://vault.example:8200", "--agent-image", "example.com/agent:test",
		"--shutdown-delay", "100ms", "--log-format", "text",
	})
	cmd.SetOut(io.Discard)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(runCtx) }()

	get := func(addr int, path string) (int, string) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", addr, path))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if code, _ := get(health, "/readyz"); code == 200 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("webhook exited early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("webhook never ready")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, _ := get(health, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "sidekey-webhook", metav1.GetOptions{})
	if err != nil || !bytes.Contains(mwc.Webhooks[0].ClientConfig.CABundle, []byte("BEGIN CERTIFICATE")) {
		t.Fatalf("caBundle not published: %v", err)
	}

	var pod *corev1.Pod
	for i := 0; ; i++ {
		uid := int64(1000)
		pod, err = cs.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Annotations: map[string]string{
				"sidekey.io/inject": "true", "sidekey.io/vault-role": "web", "sidekey.io/secret.db": "vault:database/creds/web"}},
			Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: &uid},
				Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
		}, metav1.CreateOptions{})
		if err == nil && pod.Annotations[spec.AnnotationStatus] == spec.StatusInjected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod never injected: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	agent := pod.Spec.InitContainers[0]
	if agent.Name != spec.AgentContainer || agent.Image != "example.com/agent:test" || agent.RestartPolicy == nil {
		t.Errorf("first init container %s image %s restartPolicy %v; want the native sidecar from --agent-image", agent.Name, agent.Image, agent.RestartPolicy)
	}
	if js := agent.Env[0].Value; !strings.Contains(js, `"addr":"https://vault.example:8200"`) {
		t.Errorf("spec %s; want the --vault-addr default", js)
	}
	if code, body := get(metrics, "/metrics"); code != 200 || !strings.Contains(body, `sidekey_webhook_injections_total{namespace="shop"}`) ||
		!strings.Contains(body, "sidekey_webhook_request_duration_seconds_bucket") {
		t.Errorf("/metrics = %d without the injection counter and latency histogram", code)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("webhook returned %v on shutdown", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("webhook did not shut down")
	}
}

func TestWebhookFlagsValidate(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "no TLS"},
		{[]string{"--tls-cert-file", "a"}, "give both"},
		{[]string{"--tls-cert-file", "a", "--tls-key-file", "b", "--tls-self-managed"}, "choose one"},
		{[]string{"--tls-self-managed", "--namespace", ""}, "--namespace"},
		{[]string{"--tls-cert-file", "a", "--tls-key-file", "b", "--native-sidecars", "maybe"}, "--native-sidecars"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := newWebhookCmd()
			cmd.SetArgs(tt.args)
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("webhook %v = %v; want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestInjectCommand(t *testing.T) {
	const in = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata:
      annotations: {sidekey.io/inject: "true", sidekey.io/vault-role: web, sidekey.io/secret.db: "vault:database/creds/web"}
    spec:
      securityContext: {runAsUser: 1000}
      containers: [{name: app, image: x}]
`
	run := func(stdin string, args ...string) (string, string, error) {
		cmd := newInjectCmd()
		var out, errb bytes.Buffer
		cmd.SetIn(strings.NewReader(stdin))
		cmd.SetOut(&out)
		cmd.SetErr(&errb)
		cmd.SetArgs(args)
		err := cmd.Execute()
		return out.String(), errb.String(), err
	}
	out, stderr, err := run(in, "-f", "-", "--vault-addr", "https://vault:8200", "--native-sidecars", "false")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "name: sidekey-agent-init") || !strings.Contains(out, "name: sidekey-agent\n") || !strings.Contains(stderr, "injected 1 of 1") {
		t.Errorf("inject --native-sidecars=false output lacks the init container and sidecar:\n%s\n%s", out, stderr)
	}
	_, _, err = run(strings.Replace(in, "vault-role", "vault-rol", 1), "-f", "-", "--vault-addr", "https://vault:8200")
	if err == nil || !strings.Contains(err.Error(), "sidekey.io/vault-rol: unknown sidekey annotation") {
		t.Errorf("typo: err = %v", err)
	}
	if _, _, err := run(in); err == nil || !strings.Contains(err.Error(), "-f") {
		t.Errorf("no -f: err = %v", err)
	}
}

func TestTuneGC(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	limited, unlimited := write("limited", "268435456\n"), write("unlimited", "max\n")
	tests := []struct {
		name        string
		gogc, limit string // environment
		files       []string
		wantPercent int
		wantLimit   int64
	}{
		{"container limit", "", "", []string{dir + "/missing", limited}, injector.GCPercent, 268435456 / 10 * 9},
		{"no limit", "", "", []string{unlimited, limited}, injector.GCPercent, math.MaxInt64},
		{"GOGC and GOMEMLIMIT win", "100", "1GiB", []string{limited}, 100, math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GOGC", tt.gogc)
			t.Setenv("GOMEMLIMIT", tt.limit)
			defer debug.SetGCPercent(debug.SetGCPercent(100))
			defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
			tuneGC(slog.New(slog.DiscardHandler), tt.files)
			if got := debug.SetGCPercent(100); got != tt.wantPercent {
				t.Errorf("GC percent %d; want %d", got, tt.wantPercent)
			}
			if got := debug.SetMemoryLimit(-1); got != tt.wantLimit {
				t.Errorf("memory limit %d; want %d", got, tt.wantLimit)
			}
		})
	}
}
