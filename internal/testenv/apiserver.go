package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Audiences the API server accepts in service-account tokens besides its own issuer: Vault's
// Kubernetes auth and AWS STS web identity.
var Audiences = []string{"vault", "sts.amazonaws.com"}

// StartAPIServer starts a real etcd and kube-apiserver (envtest) on loopback and returns an
// admin *rest.Config; both stop when the test ends. The ServiceAccount admission plugin is off
// (there is no controller-manager to create `default` service accounts): create the accounts a
// test needs. The service-account issuer is the API server's own URL, so its OIDC discovery
// and JWKS (/.well-known/openid-configuration, /openid/v1/jwks) are real.
func StartAPIServer(t testing.TB) *rest.Config {
	t.Helper()
	dir := filepath.Dir(Bin(t, "kube-apiserver"))
	Bin(t, "etcd")
	env := &envtest.Environment{
		BinaryAssetsDirectory:    dir,
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	env.ControlPlane.Etcd = &envtest.Etcd{}
	env.ControlPlane.Etcd.Configure().Set("unsafe-no-fsync", "true")
	api := env.ControlPlane.GetAPIServer()
	// Choose the port up front: the issuer (envtest's default, the API server's own URL) must
	// be among the accepted audiences, beside Vault's and STS's.
	api.SecurePort = FreePort(t)
	issuer := fmt.Sprintf("https://127.0.0.1:%d/", api.SecurePort)
	api.Configure().
		Set("endpoint-reconciler-type", "none").
		Set("api-audiences", append([]string{issuer}, Audiences...)...)
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("testenv: start kube-apiserver: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("testenv: stop kube-apiserver: %v", err)
		}
	})
	return cfg
}

// Kubeconfig writes cfg as a kubeconfig file in a temporary directory and returns its path,
// for kubectl, helm and other tools that take one.
func Kubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken,
	}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	kc.CurrentContext = "test"
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, p); err != nil {
		t.Fatalf("testenv: write kubeconfig: %v", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
