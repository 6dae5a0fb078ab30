package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sidekey/sidekey/injector"
	"github.com/sidekey/sidekey/internal/version"
)

// mutationFlags configure the pod mutation; `sidekey webhook` and `sidekey inject` share them.
type mutationFlags struct {
	AgentImage         string        `mapstructure:"agent-image"`
	AgentCPURequest    string        `mapstructure:"agent-cpu-request"`
	AgentMemoryRequest string        `mapstructure:"agent-memory-request"`
	AgentCPULimit      string        `mapstructure:"agent-cpu-limit"`
	AgentMemoryLimit   string        `mapstructure:"agent-memory-limit"`
	NativeSidecars     string        `mapstructure:"native-sidecars"`
	VaultAddr          string        `mapstructure:"vault-addr"`
	VaultAuthPath      string        `mapstructure:"vault-auth-path"`
	VaultAudience      string        `mapstructure:"vault-audience"`
	TmpfsSizeLimit     string        `mapstructure:"tmpfs-size-limit"`
	TokenExpiration    time.Duration `mapstructure:"token-expiration"`
	AgentLogFormat     string        `mapstructure:"agent-log-format"`
}

func addMutationFlags(fs *pflag.FlagSet, nativeDefault string) {
	d := injector.DefaultConfig()
	fs.String("agent-image", d.AgentImage, "image of the injected sidekey-agent containers")
	fs.String("agent-cpu-request", "10m", "CPU request of the agent containers (\"\" for none); pods override with sidekey.io/agent-cpu-request")
	fs.String("agent-memory-request", "16Mi", "memory request of the agent containers; pods override with sidekey.io/agent-memory-request")
	fs.String("agent-cpu-limit", "", "CPU limit of the agent containers (\"\" for none); pods override with sidekey.io/agent-cpu-limit")
	fs.String("agent-memory-limit", "64Mi", "memory limit of the agent containers; pods override with sidekey.io/agent-memory-limit")
	fs.String("native-sidecars", nativeDefault, "run the agent as a native sidecar (init container with restartPolicy Always, Kubernetes >= 1.29): auto (webhook only: ask the API server once at start), true or false (init container plus regular sidecar)")
	fs.String("vault-addr", "", "Vault address for pods that do not set sidekey.io/vault-addr")
	fs.String("vault-auth-path", d.VaultAuthPath, "mount of Vault's Kubernetes auth method for pods that do not set sidekey.io/vault-auth-path")
	fs.String("vault-audience", d.VaultAudience, "audience of the projected service-account token the agent logs in to Vault with")
	fs.String("tmpfs-size-limit", d.TmpfsSizeLimit.String(), "size limit of the per-pod secrets tmpfs; pods override with sidekey.io/tmpfs-size")
	fs.Duration("token-expiration", d.TokenExpiration, "lifetime of the projected service-account tokens (at least 10m)")
	fs.String("agent-log-format", "json", "log format of the agent (json or text), passed as SIDEKEY_LOG_FORMAT")
}

// config builds the mutation's configuration; native is the resolved --native-sidecars.
func (f *mutationFlags) config(native bool) (*injector.Config, error) {
	cfg := injector.DefaultConfig()
	cfg.AgentImage = f.AgentImage
	cfg.NativeSidecars = native
	cfg.VaultAddr, cfg.VaultAuthPath, cfg.VaultAudience = f.VaultAddr, f.VaultAuthPath, f.VaultAudience
	cfg.TokenExpiration = f.TokenExpiration
	if cfg.TokenExpiration < 10*time.Minute {
		return nil, fmt.Errorf("--token-expiration %s: the API server wants at least 10m", cfg.TokenExpiration)
	}
	cfg.Resources = corev1.ResourceRequirements{}
	for _, r := range []struct {
		flag, val string
		list      *corev1.ResourceList
		name      corev1.ResourceName
	}{
		{"agent-cpu-request", f.AgentCPURequest, &cfg.Resources.Requests, corev1.ResourceCPU},
		{"agent-memory-request", f.AgentMemoryRequest, &cfg.Resources.Requests, corev1.ResourceMemory},
		{"agent-cpu-limit", f.AgentCPULimit, &cfg.Resources.Limits, corev1.ResourceCPU},
		{"agent-memory-limit", f.AgentMemoryLimit, &cfg.Resources.Limits, corev1.ResourceMemory},
	} {
		if r.val == "" {
			continue
		}
		q, err := resource.ParseQuantity(r.val)
		if err != nil {
			return nil, fmt.Errorf("--%s %q: %w", r.flag, r.val, err)
		}
		if *r.list == nil {
			*r.list = corev1.ResourceList{}
		}
		(*r.list)[r.name] = q
	}
	q, err := resource.ParseQuantity(f.TmpfsSizeLimit)
	if err != nil || q.Sign() <= 0 {
		return nil, fmt.Errorf("--tmpfs-size-limit %q: want a positive quantity such as 4Mi", f.TmpfsSizeLimit)
	}
	cfg.TmpfsSizeLimit = q
	if f.AgentLogFormat != "" {
		cfg.AgentEnv = append(cfg.AgentEnv, corev1.EnvVar{Name: "SIDEKEY_LOG_FORMAT", Value: f.AgentLogFormat})
	}
	if cfg.AgentImage == "" {
		return nil, errors.New("--agent-image: empty")
	}
	return &cfg, nil
}

type webhookConfig struct {
	mutationFlags  `mapstructure:",squash"`
	Listen         string        `mapstructure:"listen"`
	TLSCertFile    string        `mapstructure:"tls-cert-file"`
	TLSKeyFile     string        `mapstructure:"tls-key-file"`
	TLSSelfManaged bool          `mapstructure:"tls-self-managed"`
	TLSSecret      string        `mapstructure:"tls-secret"`
	ServiceName    string        `mapstructure:"service-name"`
	Namespace      string        `mapstructure:"namespace"`
	WebhookConfig  string        `mapstructure:"webhook-config"`
	TLSExtraSANs   []string      `mapstructure:"tls-extra-sans"`
	HealthAddr     string        `mapstructure:"health-addr"`
	MetricsAddr    string        `mapstructure:"metrics-addr"`
	MaxBodyBytes   int64         `mapstructure:"max-body-bytes"`
	Kubeconfig     string        `mapstructure:"kubeconfig"`
	LogFormat      string        `mapstructure:"log-format"`
	LogLevel       string        `mapstructure:"log-level"`
	ShutdownDelay  time.Duration `mapstructure:"shutdown-delay"`
}

func (c *webhookConfig) Validate() error {
	files := c.TLSCertFile != "" || c.TLSKeyFile != ""
	switch {
	case files && c.TLSSelfManaged:
		return errors.New("--tls-cert-file/--tls-key-file and --tls-self-managed: choose one")
	case files && (c.TLSCertFile == "" || c.TLSKeyFile == ""):
		return errors.New("--tls-cert-file and --tls-key-file: give both")
	case !files && !c.TLSSelfManaged:
		return errors.New("no TLS: give --tls-cert-file and --tls-key-file, or --tls-self-managed")
	case c.TLSSelfManaged && (c.TLSSecret == "" || c.ServiceName == "" || c.Namespace == "" || c.WebhookConfig == ""):
		return errors.New("--tls-self-managed needs --tls-secret, --service-name, --namespace (or POD_NAMESPACE) and --webhook-config")
	}
	switch c.NativeSidecars {
	case "auto", "true", "false":
	default:
		return fmt.Errorf("--native-sidecars %q: want auto, true or false", c.NativeSidecars)
	}
	if c.MaxBodyBytes <= 0 {
		return fmt.Errorf("--max-body-bytes %d: must be positive", c.MaxBodyBytes)
	}
	return nil
}

func newWebhookCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "webhook",
		Short: "Run the mutating admission webhook that injects the sidekey agent into annotated pods",
		Long: `Run the mutating admission webhook. Pods annotated sidekey.io/inject: "true" get the
sidekey-agent (a native sidecar on Kubernetes >= 1.29, else an init container plus a sidecar)
that writes their secrets into a per-pod tmpfs; pods with bad sidekey.io/* annotations are
refused with a message naming the annotation. See "sidekey inject" to do the same offline.

Endpoints: POST /mutate on --listen (HTTPS); /healthz and /readyz on --health-addr;
/metrics on --metrics-addr.

TLS comes either from --tls-cert-file/--tls-key-file (reloaded when they change, e.g. by
cert-manager) or, with --tls-self-managed, from a CA and certificate the webhook keeps in the
Secret --tls-secret, publishing the CA bundle into --webhook-config and rotating both with
overlap so that any number of replicas agree.

Every flag can also be set as SIDEKEY_<FLAG> (e.g. SIDEKEY_VAULT_ADDR) or in --config.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg webhookConfig
			if err := load(cmd, &cfg); err != nil {
				return err
			}
			return runWebhook(cmd.Context(), &cfg)
		},
	}
	fs := withConfigFlag(cmd)
	fs.String("listen", ":8443", "HTTPS address of the admission endpoint /mutate")
	fs.String("tls-cert-file", "", "serving certificate (PEM), reloaded when it changes")
	fs.String("tls-key-file", "", "serving key (PEM), reloaded when it changes")
	fs.Bool("tls-self-managed", false, "create and rotate a CA and serving certificate in --tls-secret and keep the caBundle of --webhook-config current")
	fs.String("tls-secret", "sidekey-webhook-tls", "Secret (in --namespace) holding the self-managed CA and certificate")
	fs.String("service-name", "sidekey-webhook", "Service in front of the webhook; names the self-managed certificate")
	fs.String("namespace", os.Getenv("POD_NAMESPACE"), "namespace of the webhook's Service and Secret (default $POD_NAMESPACE)")
	fs.StringSlice("tls-extra-sans", nil, "extra DNS names or IP addresses for the self-managed certificate (e.g. 127.0.0.1 for a webhook outside the cluster)")
	fs.String("webhook-config", "sidekey-webhook", "MutatingWebhookConfiguration whose caBundle the self-managed TLS keeps current")
	fs.String("health-addr", ":8081", "address of /healthz and /readyz (plain HTTP)")
	fs.String("metrics-addr", ":9090", "address of the Prometheus /metrics (plain HTTP; empty to disable)")
	fs.Int64("max-body-bytes", injector.DefaultMaxBodyBytes, "largest AdmissionReview accepted; larger bodies get HTTP 413")
	fs.String("kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	fs.String("log-format", "json", "log format: json or text")
	fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.Duration("shutdown-delay", 5*time.Second, "on SIGTERM, how long to fail /readyz while still serving before shutting down")
	addMutationFlags(fs, "auto")
	return cmd
}

// The files that hold a container's memory limit: cgroup v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// tuneGC sets the garbage collector for a webhook's load unless GOGC or GOMEMLIMIT say
// otherwise: the target injector.GCPercent, and a soft memory limit of 90% of the container's
// memory limit, so that a burst of reviews makes the collector work harder before the kernel
// kills the pod.
func tuneGC(log *slog.Logger, limitFiles []string) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(injector.GCPercent)
	}
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	for _, f := range limitFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// "max" (v2) means no limit; v1 says so with a number near MaxInt64, harmless here.
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			debug.SetMemoryLimit(n / 10 * 9)
			log.Info("memory limit for the garbage collector", "bytes", n/10*9, "from", f)
		}
		return
	}
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

func runWebhook(ctx context.Context, c *webhookConfig) error {
	log, err := newLogger(c.LogFormat, c.LogLevel)
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	tuneGC(log, cgroupMemoryFiles)

	var client kubernetes.Interface
	if rc, err := restConfig(c.Kubeconfig); err != nil {
		if c.TLSSelfManaged || c.NativeSidecars == "auto" {
			return fmt.Errorf("kubernetes client (needed for --tls-self-managed or --native-sidecars=auto): %w", err)
		}
		log.Warn("no kubernetes client; ServiceAccount IRSA roles will not be looked up", "err", err)
	} else {
		rc.UserAgent = "sidekey-webhook/" + version.Version
		if client, err = kubernetes.NewForConfig(rc); err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
	}

	native := c.NativeSidecars == "true"
	if c.NativeSidecars == "auto" {
		if native, err = injector.DetectNativeSidecars(client.Discovery()); err != nil {
			return err
		}
		log.Info("native sidecars detected", "enabled", native)
	}
	mcfg, err := c.config(native)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	handler := &injector.Handler{Config: mcfg, Log: log, Metrics: injector.NewMetrics(reg)}
	if client != nil {
		handler.Roles = &injector.ServiceAccountRoles{Get: saGetter{client}, TTL: 30 * time.Second}
	}

	var (
		getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)
		ready   = func() error { return nil }
	)
	if c.TLSSelfManaged {
		m := &injector.SelfManagedTLS{Client: client, Namespace: c.Namespace, SecretName: c.TLSSecret,
			WebhookConfig: c.WebhookConfig, DNSNames: injector.ServiceDNSNames(c.ServiceName, c.Namespace), Log: log}
		for _, san := range c.TLSExtraSANs {
			if ip := net.ParseIP(san); ip != nil {
				m.IPs = append(m.IPs, ip)
			} else {
				m.DNSNames = append(m.DNSNames, san)
			}
		}
		for {
			err := m.Reconcile(ctx)
			if err == nil {
				break
			}
			log.Error("self-managed TLS not ready; retrying", "err", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Second):
			}
		}
		go m.Run(ctx)
		getCert, ready = m.GetCertificate, m.Ready
	} else {
		w, err := injector.WatchCertFiles(ctx, c.TLSCertFile, c.TLSKeyFile, log)
		if err != nil {
			return err
		}
		getCert = w.GetCertificate
	}

	var shuttingDown atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/mutate", injector.NewServer(handler, c.MaxBodyBytes))
	srv := &http.Server{Addr: c.Listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: getCert},
		ErrorLog:  slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	health := http.NewServeMux()
	health.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	health.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if shuttingDown.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	servers := []*http.Server{{Addr: c.HealthAddr, Handler: health, ReadHeaderTimeout: 10 * time.Second}}
	if c.MetricsAddr != "" {
		mm := http.NewServeMux()
		mm.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		servers = append(servers, &http.Server{Addr: c.MetricsAddr, Handler: mm, ReadHeaderTimeout: 10 * time.Second})
	}

	errc := make(chan error, 3)
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", c.Listen, err)
	}
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	for _, s := range servers {
		l, err := net.Listen("tcp", s.Addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.Addr, err)
		}
		go func() { errc <- s.Serve(l) }()
	}
	log.Info("webhook serving", "listen", c.Listen, "health", c.HealthAddr, "metrics", c.MetricsAddr,
		"nativeSidecars", native, "selfManagedTLS", c.TLSSelfManaged, "version", version.Version)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "delay", c.ShutdownDelay)
	shuttingDown.Store(true)
	time.Sleep(c.ShutdownDelay) // let endpoints drop this replica before closing connections
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	return err
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return rest.InClusterConfig()
}

type saGetter struct{ client kubernetes.Interface }

func (g saGetter) Get(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	return g.client.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
}
