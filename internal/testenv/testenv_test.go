package testenv

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	vault "github.com/hashicorp/vault/api"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestAPIServerSmoke runs against a real kube-apiserver + etcd: it stores a Namespace and a
// Pod, reads the Pod back, and gets a service-account token for the vault audience.
func TestAPIServerSmoke(t *testing.T) {
	cfg := StartAPIServer(t)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "smoke"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "smoke"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}},
	}
	if _, err := cs.CoreV1().Pods("smoke").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	got, err := cs.CoreV1().Pods("smoke").Get(ctx, "p", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod: %v", err)
	}
	if got.Spec.Containers[0].Image != "busybox" || got.UID == "" {
		t.Errorf("stored pod = %+v; want image busybox and a UID", got.Spec.Containers)
	}
	if _, err := cs.CoreV1().ServiceAccounts("smoke").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts("smoke").CreateToken(ctx, "app", &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{Audiences: []string{"vault"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token request for audience vault: %v", err)
	}
	if n := strings.Count(tr.Status.Token, "."); n != 2 {
		t.Errorf("token has %d dots; want a JWT", n)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil || v.GitVersion == "" || v.GitVersion == "v0.0.0" {
		t.Errorf("server version = %v, %v; want the pinned release", v, err)
	}
}

// TestVaultSmoke runs against a real Vault dev server: KV v2 write and read, and a restart.
func TestVaultSmoke(t *testing.T) {
	v := StartVault(t)
	cfg := vault.DefaultConfig()
	cfg.Address = v.Addr
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(v.Token)
	ctx := context.Background()
	if _, err := c.KVv2("secret").Put(ctx, "app", map[string]any{"password": "smoke-value"}); err != nil {
		t.Fatalf("kv put: %v\n%s", err, v.Log())
	}
	s, err := c.KVv2("secret").Get(ctx, "app")
	if err != nil {
		t.Fatalf("kv get: %v", err)
	}
	if got := s.Data["password"]; got != "smoke-value" {
		t.Errorf("kv get password = %v; want smoke-value", got)
	}
	v.Stop()
	if _, err := c.KVv2("secret").Get(ctx, "app"); err == nil {
		t.Errorf("kv get after Stop succeeded; want an error")
	}
	v.Restart(t)
	if _, err := c.Sys().Health(); err != nil {
		t.Errorf("health after Restart: %v", err)
	}
}

// TestHelmSmoke runs the real helm binary.
func TestHelmSmoke(t *testing.T) {
	out, err := exec.Command(Bin(t, "helm"), "version", "--short").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "v3.") {
		t.Fatalf("helm version = %q, %v; want v3.x", out, err)
	}
}
