package vault

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vapi "github.com/hashicorp/vault/api"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/testenv"
)

// TestKubernetesAuth logs in with a real service-account token from a real kube-apiserver
// (TokenRequest, audience vault), which Vault's kubernetes auth method reviews against that
// same API server (TokenReview with a reviewer bound to system:auth-delegator).
func TestKubernetesAuth(t *testing.T) {
	cfg := testenv.StartAPIServer(t)
	v := testenv.StartVault(t)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, ns := range []string{"vault-sys", "demo"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, sa := range [][2]string{{"vault-sys", "vault-reviewer"}, {"demo", "app"}, {"demo", "other"}} {
		if _, err := cs.CoreV1().ServiceAccounts(sa[0]).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa[1]}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vault-reviewer-delegator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "vault-sys", Name: "vault-reviewer"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := func(ns, sa string, audiences ...string) string {
		t.Helper()
		exp := int64(3600)
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{
			Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &exp},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenRequest %s/%s: %v", ns, sa, err)
		}
		p := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(p, []byte(tr.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	reviewer, _ := os.ReadFile(token("vault-sys", "vault-reviewer"))

	c := rootClient(t, v)
	if err := c.Sys().EnableAuthWithOptions("kubernetes", &vapi.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, "auth/kubernetes/config", map[string]any{
		"kubernetes_host": cfg.Host, "kubernetes_ca_cert": string(cfg.CAData),
		"token_reviewer_jwt": string(reviewer), "disable_local_ca_jwt": true,
	})
	if err := c.Sys().PutPolicy("read-app", `path "secret/data/app" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	// A short token TTL, so the test also sees the agent keep its token alive.
	mustWrite(t, c, "auth/kubernetes/role/app", map[string]any{
		"bound_service_account_names": "app", "bound_service_account_namespaces": "demo",
		"policies": "read-app", "audience": "vault", "token_ttl": "4s", "token_max_ttl": "1h",
	})
	mustWrite(t, c, "secret/data/app", map[string]any{"data": map[string]any{"password": "from-k8s-auth"}})
	secrets := []spec.Secret{{Name: "db", File: "db/password", Mode: 0o400, Source: src("vault:secret/app#password")}}

	t.Run("login and read", func(t *testing.T) {
		h := newHarness(t, spec.Vault{Addr: v.Addr, Role: "app", TokenPath: token("demo", "app", "vault")}, "", secrets, false)
		if err := h.agent.Sync(ctx); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		if b, _ := os.ReadFile(filepath.Join(h.dir, "db/password")); string(b) != "from-k8s-auth" {
			t.Errorf("file = %q; want from-k8s-auth", b)
		}
		// Past the token's TTL: the agent renewed it (or logged in again) and still reads.
		time.Sleep(5 * time.Second)
		mustWrite(t, c, "secret/data/app", map[string]any{"data": map[string]any{"password": "rotated"}})
		time.Sleep(1100 * time.Millisecond)
		h.clock.Add(2 * time.Minute)
		if err := h.agent.Sync(ctx); err != nil {
			t.Fatalf("Sync after the token TTL: %v", err)
		}
		if b, _ := os.ReadFile(filepath.Join(h.dir, "db/password")); string(b) != "rotated" {
			t.Errorf("file = %q; want rotated", b)
		}
		if logs := h.logs.String(); !strings.Contains(logs, "renewed vault token") && strings.Count(logs, "logged in to vault") < 2 {
			t.Errorf("the token was neither renewed nor replaced:\n%s", logs)
		}
	})

	for _, tt := range []struct {
		name, role, tokenPath, want string
	}{
		{"wrong role", "nope", token("demo", "app", "vault"), `role "nope"`},
		{"wrong audience", "app", token("demo", "app", "sts.amazonaws.com"), "audience"},
		{"wrong service account", "app", token("demo", "other", "vault"), "service account name not authorized"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := New(spec.Vault{Addr: v.Addr, Role: tt.role, TokenPath: tt.tokenPath}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			res := b.Fetch(ctx, []spec.Source{*src("vault:secret/app")})
			err = res[0].Err
			if err == nil {
				t.Fatal("Fetch succeeded; want a login failure")
			}
			msg := err.Error()
			t.Logf("message: %s", msg)
			if !strings.Contains(msg, "vault login failed") || !strings.Contains(msg, tt.want) {
				t.Errorf("error %q; want a login failure mentioning %q", msg, tt.want)
			}
			if jwt, _ := os.ReadFile(tt.tokenPath); strings.Contains(msg, string(jwt)) {
				t.Errorf("the error contains the service account token")
			}
		})
	}
}
