// Package cluster starts a real single-node Kubernetes cluster for end-to-end tests: etcd,
// kube-apiserver, containerd with runc and a CNI bridge, a kubelet, and a Vault dev server, all
// on this machine's loopback (pods reach Vault through a proxy on the bridge's gateway address).
// Pods really run: there is no scheduler, so they set spec.nodeName (NodeName), and nothing
// is pulled, so they use images imported with ImportImages (AppImage, PauseImage, or what a
// test builds) with imagePullPolicy Never or IfNotPresent.
//
// It needs root, the Debian packages containerd, runc, containernetworking-plugins and
// busybox-static (make deps) and the binaries of hack/testbin.sh (make testbin). Only one
// cluster runs on a machine at a time: Start waits for a file lock, so test packages that run
// in parallel take turns. State lives in Dir (/tmp/sidekey-cluster); hack/cluster-clean.sh
// removes it and everything the node left on the host, at the end of each run, before each
// start, and by hand after a crashed run.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/sidekey/sidekey/internal/testenv"
)

// Fixed names and addresses of the node.
const (
	// NodeName is the node's name: pods set spec.nodeName to it.
	NodeName = "sidekey-node"
	// Bridge is the CNI bridge; GatewayIP its address, the host as pods see it.
	Bridge    = "sidekey0"
	GatewayIP = "10.245.0.1"
	podSubnet = "10.245.0.0/24"
	// PodLogDir is where the kubelet writes container logs (kubectl logs does not work here:
	// the node has no address the API server could reach it by except loopback).
	PodLogDir = "/var/log/pods"
)

// DefaultDir is the cluster's state directory unless SIDEKEY_CLUSTER_DIR is set.
const DefaultDir = "/tmp/sidekey-cluster"

// Cluster is a running single-node cluster.
type Cluster struct {
	Dir        string       // state: PKI, logs, containerd and kubelet roots
	Config     *rest.Config // admin
	Client     kubernetes.Interface
	Kubeconfig string // admin kubeconfig file, for kubectl and helm
	APIServer  string // https://127.0.0.1:PORT
	CAFile     string // the cluster CA (API server and kubelet certificates)
	// KubeletRoot holds the pods' volumes: KubeletRoot/pods/<uid>/volumes/...
	KubeletRoot      string
	ContainerdSocket string
	Vault            *testenv.Vault
	// VaultAddr is Vault as pods reach it (a proxy on the bridge's gateway address).
	VaultAddr string

	repo  string
	pki   *pki
	procs []*process
	lock  *os.File
	proxy *proxy
	// apiProxy is the API server as pods reach it.
	apiProxy *proxy
	cancel   context.CancelFunc
	logf     func(format string, args ...any)
}

// Option changes what Start starts.
type Option func(*options)

type options struct{ noVault bool }

// WithoutVault starts no Vault server (Vault, VaultAddr stay empty).
func WithoutVault() Option { return func(o *options) { o.noVault = true } }

// Start starts the cluster, waiting for the node to be Ready and Vault's Kubernetes auth to be
// configured, and stops and cleans it up when the test ends, whether it passes or fails.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	begin := time.Now()
	if os.Geteuid() != 0 {
		t.Fatalf("cluster: the single-node cluster needs root (containerd, runc, mounts, network namespaces); run the tests as root")
	}
	for _, tool := range []string{"containerd", "runc", "ctr", "ip", "/usr/lib/cni/bridge", busyboxPath} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("cluster: %s not found (%v): run `make deps` (hack/deps.sh)", tool, err)
		}
	}
	repo, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("SIDEKEY_CLUSTER_DIR")
	if dir == "" {
		dir = DefaultDir
	}
	c := &Cluster{Dir: dir, repo: repo, logf: t.Logf}
	bins := map[string]string{}
	for _, b := range []string{"etcd", "kube-apiserver", "kubelet", "kubectl"} {
		bins[b] = testenv.Bin(t, b)
	}

	c.lock, err = acquireLock(dir+".lock", t.Logf)
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs(t)
		}
		c.Close()
	})
	if err := c.clean(); err != nil {
		t.Fatalf("cluster: clean up a previous run: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.start(ctx, bins); err != nil {
		c.dumpLogs(t)
		t.Fatalf("cluster: %v", err)
	}
	if o.noVault {
		t.Logf("cluster: node %s Ready, up in %s", NodeName, time.Since(begin).Round(100*time.Millisecond))
		return c
	}
	c.Vault = testenv.StartVault(t)
	c.proxy, err = startProxy(net.JoinHostPort(GatewayIP, "0"), strings.TrimPrefix(c.Vault.Addr, "http://"))
	if err != nil {
		t.Fatalf("cluster: vault proxy: %v", err)
	}
	c.VaultAddr = "http://" + c.proxy.Addr()
	if err := c.ConfigureVault(ctx); err != nil {
		t.Fatalf("cluster: %v", err)
	}
	t.Logf("cluster: node %s Ready, Vault at %s (pods: %s), up in %s", NodeName, c.Vault.Addr, c.VaultAddr, time.Since(begin).Round(100*time.Millisecond))
	return c
}

// start brings up everything but Vault.
func (c *Cluster) start(ctx context.Context, bins map[string]string) error {
	for _, d := range []string{"pki", "containerd", "kubelet", "cni/net.d", "cni/ipam", "images", "runc"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return err
		}
	}
	p, err := newPKI(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	c.CAFile = p.CAFile
	c.pki = p
	loop := []net.IP{net.ParseIP("127.0.0.1")}
	apiCert, apiKey, err := p.issue("apiserver", "kube-apiserver", nil,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		append(loop, net.ParseIP("10.0.0.1"), net.ParseIP(GatewayIP)))
	if err != nil {
		return err
	}
	adminCert, adminKey, err := p.issue("admin", "admin", []string{"system:masters"}, nil, nil)
	if err != nil {
		return err
	}
	nodeCert, nodeKey, err := p.issue("kubelet-client", "system:node:"+NodeName, []string{"system:nodes"}, nil, nil)
	if err != nil {
		return err
	}
	kubeletCert, kubeletKey, err := p.issue("kubelet", NodeName, nil, []string{NodeName, "localhost"}, loop)
	if err != nil {
		return err
	}

	// etcd
	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	etcd, err := startProcess(c.Dir, "etcd", nil, bins["etcd"],
		"--name=sidekey", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=sidekey="+peerURL, "--unsafe-no-fsync=true")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, etcd)
	if err := waitFor(ctx, etcd, 30*time.Second, func() error { return httpOK(http.DefaultClient, etcdURL+"/health") }); err != nil {
		return fmt.Errorf("etcd not healthy: %w", err)
	}

	// kube-apiserver
	c.APIServer = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	pki := p.dir
	api, err := startProcess(c.Dir, "kube-apiserver", nil, bins["kube-apiserver"],
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports[2]),
		"--tls-cert-file="+apiCert, "--tls-private-key-file="+apiKey, "--client-ca-file="+p.CAFile,
		"--service-account-issuer="+c.APIServer,
		"--service-account-key-file="+filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(pki, "sa.key"),
		"--api-audiences="+strings.Join(append([]string{c.APIServer}, testenv.Audiences...), ","),
		"--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
		"--authorization-mode=Node,RBAC", "--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--cert-dir="+filepath.Join(c.Dir, "apiserver-certs"))
	if err != nil {
		return err
	}
	c.procs = append(c.procs, api)
	c.Config = &rest.Config{
		Host:            c.APIServer,
		TLSClientConfig: rest.TLSClientConfig{CAFile: p.CAFile, CertFile: adminCert, KeyFile: adminKey},
		QPS:             100, Burst: 200,
	}
	if err := rest.LoadTLSFiles(c.Config); err != nil {
		return err
	}
	c.Client, err = kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(c.Config)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, api, 90*time.Second, func() error { return httpOK(hc, c.APIServer+"/readyz") }); err != nil {
		return fmt.Errorf("kube-apiserver not ready: %w", err)
	}
	c.Kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, c.APIServer, p.CAFile, adminCert, adminKey); err != nil {
		return err
	}
	nodeKubeconfig := filepath.Join(c.Dir, "kubelet.kubeconfig")
	if err := writeKubeconfig(nodeKubeconfig, c.APIServer, p.CAFile, nodeCert, nodeKey); err != nil {
		return err
	}
	svcCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.publishRootCA(svcCtx)

	// The bridge exists before the first pod so that proxies can listen on its address. Pods
	// reach the API server through one (there is no kube-proxy): RunWorkloads points
	// in-cluster clients at it.
	if err := c.createBridge(); err != nil {
		return err
	}
	c.apiProxy, err = startProxy(net.JoinHostPort(GatewayIP, "0"), strings.TrimPrefix(c.APIServer, "https://"))
	if err != nil {
		return fmt.Errorf("api server proxy: %w", err)
	}

	// containerd
	c.ContainerdSocket = filepath.Join(c.Dir, "containerd", "containerd.sock")
	if err := c.writeNodeConfig(p.CAFile, kubeletCert, kubeletKey, ports[3], ports[4]); err != nil {
		return err
	}
	ctrd, err := startProcess(c.Dir, "containerd", nil, "containerd", "--config", filepath.Join(c.Dir, "containerd", "config.toml"))
	if err != nil {
		return err
	}
	c.procs = append(c.procs, ctrd)
	if err := waitFor(ctx, ctrd, 30*time.Second, func() error {
		return exec.Command("ctr", "-a", c.ContainerdSocket, "version").Run()
	}); err != nil {
		return fmt.Errorf("containerd not serving: %w", err)
	}
	archive, err := baseImages(filepath.Join(c.Dir, "images"))
	if err != nil {
		return err
	}
	if err := c.ImportImages(archive); err != nil {
		return err
	}

	// kubelet
	c.KubeletRoot = filepath.Join(c.Dir, "kubelet")
	kubelet, err := startProcess(c.Dir, "kubelet", nil, bins["kubelet"],
		"--config="+filepath.Join(c.Dir, "kubelet-config.yaml"),
		"--kubeconfig="+nodeKubeconfig, "--root-dir="+c.KubeletRoot,
		"--hostname-override="+NodeName, "--node-ip=127.0.0.1")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, kubelet)
	if err := waitFor(ctx, kubelet, 90*time.Second, c.nodeReady); err != nil {
		return fmt.Errorf("node %s not Ready: %w", NodeName, err)
	}
	return nil
}

func (c *Cluster) writeNodeConfig(caFile, certFile, keyFile string, kubeletPort, healthzPort int) error {
	ctrd := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  # root here lacks CAP_SYS_RESOURCE: runc's write of oom_score_adj -998 fails otherwise
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[6]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[7]q
`, filepath.Join(c.Dir, "containerd", "root"), filepath.Join(c.Dir, "containerd", "state"),
		c.ContainerdSocket, c.ContainerdSocket+".ttrpc", PauseImage,
		filepath.Join(c.Dir, "runc"), filepath.Join(c.Dir, "cni", "net.d"))
	if err := os.WriteFile(filepath.Join(c.Dir, "containerd", "config.toml"), []byte(ctrd), 0o644); err != nil {
		return err
	}
	cni := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "sidekey", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
`, Bridge, filepath.Join(c.Dir, "cni", "ipam"), podSubnet, GatewayIP)
	if err := os.WriteFile(filepath.Join(c.Dir, "cni", "net.d", "10-sidekey.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: %q}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%s
# the host mixes cgroup v1 and v2; kubelet 1.35+ refuses v1 unless told
failCgroupV1: false
failSwapOn: false
evictionHard: {"memory.available": "1Mi", "nodefs.available": "1%%", "imagefs.available": "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
serializeImagePulls: false
tlsCertFile: %q
tlsPrivateKeyFile: %q
`, kubeletPort, healthzPort, caFile, c.ContainerdSocket, certFile, keyFile)
	return os.WriteFile(filepath.Join(c.Dir, "kubelet-config.yaml"), []byte(kubelet), 0o644)
}

func (c *Cluster) createBridge() error {
	for _, args := range [][]string{
		{"link", "add", Bridge, "type", "bridge"},
		{"addr", "add", GatewayIP + "/24", "dev", Bridge},
		{"link", "set", Bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func (c *Cluster) nodeReady() error {
	n, err := c.Client.CoreV1().Nodes().Get(context.Background(), NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			if cond.Status == corev1.ConditionTrue {
				return nil
			}
			return fmt.Errorf("Ready=%s: %s", cond.Status, cond.Message)
		}
	}
	return errors.New("no Ready condition yet")
}

// publishRootCA stands in for kube-controller-manager's root-ca-cert-publisher: every
// namespace gets the kube-root-ca.crt ConfigMap that service-account token volumes mount.
func (c *Cluster) publishRootCA(ctx context.Context) {
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		c.logf("cluster: read CA: %v", err)
		return
	}
	for ctx.Err() == nil {
		w, err := c.Client.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{})
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		for ev := range w.ResultChan() {
			ns, ok := ev.Object.(*corev1.Namespace)
			if !ok || ns.DeletionTimestamp != nil {
				continue
			}
			_ = c.ensureRootCA(ctx, ns.Name, ca)
		}
		w.Stop()
	}
}

func (c *Cluster) ensureRootCA(ctx context.Context, ns string, ca []byte) error {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt", Namespace: ns},
		Data:       map[string]string{"ca.crt": string(ca)},
	}
	_, err := c.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// ConfigureVault enables Vault's Kubernetes auth method against the cluster's API server (a
// reviewer token of a service account bound to system:auth-delegator). Start calls it, and
// RestartVault calls it again for the fresh dev state.
func (c *Cluster) ConfigureVault(ctx context.Context) error {
	cs := c.Client
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "vault-auth", Namespace: "kube-system"}}
	if _, err := cs.CoreV1().ServiceAccounts("kube-system").Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create vault-auth service account: %w", err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vault-auth-delegator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "vault-auth", Namespace: "kube-system"}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("bind vault-auth to system:auth-delegator: %w", err)
	}
	exp := int64(24 * 3600)
	tr, err := cs.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "vault-auth",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for vault-auth: %w", err)
	}
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		return err
	}
	vc, err := c.VaultClient()
	if err != nil {
		return err
	}
	auths, err := vc.Sys().ListAuthWithContext(ctx)
	if err != nil {
		return fmt.Errorf("vault: list auth methods: %w", err)
	}
	if _, ok := auths["kubernetes/"]; !ok {
		if err := vc.Sys().EnableAuthWithOptionsWithContext(ctx, "kubernetes", &vault.EnableAuthOptions{Type: "kubernetes"}); err != nil {
			return fmt.Errorf("vault: enable kubernetes auth: %w", err)
		}
	}
	if _, err := vc.Logical().WriteWithContext(ctx, "auth/kubernetes/config", map[string]any{
		"kubernetes_host":      c.APIServer,
		"kubernetes_ca_cert":   string(ca),
		"token_reviewer_jwt":   tr.Status.Token,
		"disable_local_ca_jwt": true,
	}); err != nil {
		return fmt.Errorf("vault: configure kubernetes auth: %w", err)
	}
	return nil
}

// VaultClient returns a Vault client with the root token, on the host's address.
func (c *Cluster) VaultClient() (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = c.Vault.Addr
	vc, err := vault.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	vc.SetToken(c.Vault.Token)
	return vc, nil
}

// VaultRole writes a policy that may read paths (HCL path globs, read capability) and a
// Kubernetes auth role of that name bound to the service account ns/sa and audience vault.
func (c *Cluster) VaultRole(ctx context.Context, role, ns, sa string, paths ...string) error {
	vc, err := c.VaultClient()
	if err != nil {
		return err
	}
	var hcl strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&hcl, "path %q { capabilities = [\"read\"] }\n", p)
	}
	if err := vc.Sys().PutPolicyWithContext(ctx, role, hcl.String()); err != nil {
		return fmt.Errorf("vault: policy %s: %w", role, err)
	}
	if _, err := vc.Logical().WriteWithContext(ctx, "auth/kubernetes/role/"+role, map[string]any{
		"bound_service_account_names":      sa,
		"bound_service_account_namespaces": ns,
		"audience":                         "vault",
		"token_policies":                   role,
		"token_ttl":                        "1h",
	}); err != nil {
		return fmt.Errorf("vault: role %s: %w", role, err)
	}
	return nil
}

// RestartVault starts a fresh Vault dev server on the same address, as after an outage, and
// configures its Kubernetes auth again; roles and secrets are the test's to write again.
func (c *Cluster) RestartVault(t testing.TB) {
	t.Helper()
	c.Vault.Restart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.ConfigureVault(ctx); err != nil {
		t.Fatalf("cluster: %v", err)
	}
}

// Close stops the cluster and removes what it left on the host (hack/cluster-clean.sh).
func (c *Cluster) Close() {
	if c.cancel != nil {
		c.cancel()
	}
	for _, p := range []*proxy{c.proxy, c.apiProxy} {
		if p != nil {
			p.Close()
		}
	}
	if err := c.clean(); err != nil {
		c.logf("cluster: clean up: %v", err)
	}
	for _, p := range c.procs {
		p.stop(5 * time.Second)
	}
	if c.lock != nil {
		_ = c.lock.Close()
		c.lock = nil
	}
}

func (c *Cluster) clean() error {
	cmd := exec.Command("bash", filepath.Join(c.repo, "hack", "cluster-clean.sh"), c.Dir)
	cmd.Env = append(os.Environ(), "SIDEKEY_CLUSTER_BRIDGE="+Bridge)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("hack/cluster-clean.sh %s: %w: %s", c.Dir, err, out)
	}
	return nil
}

func (c *Cluster) dumpLogs(t testing.TB) {
	for _, p := range c.procs {
		t.Logf("cluster: last lines of %s:\n%s", p.logPath, p.tail(25))
	}
}

// acquireLock takes an exclusive flock on path, waiting for another cluster to finish.
func acquireLock(path string, logf func(string, ...any)) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		return f, nil
	}
	logf("cluster: another test cluster runs on this machine; waiting for %s", path)
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// waitFor polls check until it succeeds, the process exits, or the timeout passes.
func waitFor(ctx context.Context, p *process, timeout time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		if !p.running() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, last, p.tail(30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%v after %s\n%s", last, timeout, p.tail(30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func httpOK(hc *http.Client, url string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func writeKubeconfig(path, server, ca, cert, key string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["sidekey"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: ca}
	kc.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificate: cert, ClientKey: key}
	kc.Contexts["sidekey"] = &clientcmdapi.Context{Cluster: "sidekey", AuthInfo: "user"}
	kc.CurrentContext = "sidekey"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// IssueServingCert issues a certificate for a server at the given IP addresses, signed by the
// cluster CA, and returns it with its key (PEM) and the CA (PEM), e.g. for a webhook the API
// server calls by URL.
func (c *Cluster) IssueServingCert(name string, ips ...string) (cert, key, ca []byte, err error) {
	var addrs []net.IP
	for _, ip := range ips {
		addrs = append(addrs, net.ParseIP(ip))
	}
	certFile, keyFile, err := c.pki.issue(name, name, nil, []string{"localhost"}, addrs)
	if err != nil {
		return nil, nil, nil, err
	}
	if cert, err = os.ReadFile(certFile); err != nil {
		return nil, nil, nil, err
	}
	if key, err = os.ReadFile(keyFile); err != nil {
		return nil, nil, nil, err
	}
	ca, err = os.ReadFile(c.CAFile)
	return cert, key, ca, err
}
