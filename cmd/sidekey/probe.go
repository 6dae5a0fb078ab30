package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/sidekey/sidekey/bpf"
	"github.com/sidekey/sidekey/bpf/kube"
	"github.com/sidekey/sidekey/bpf/policy"
	"github.com/sidekey/sidekey/bpf/report"
)

type probeConfig struct {
	Watch        []string      `mapstructure:"watch"`
	Allow        []string      `mapstructure:"allow"`
	Enforce      bool          `mapstructure:"enforce"`
	Attach       string        `mapstructure:"attach"`
	Output       string        `mapstructure:"output"`
	MetricsAddr  string        `mapstructure:"metrics-addr"`
	RateInterval time.Duration `mapstructure:"rate-interval"`
	LogLevel     string        `mapstructure:"log-level"`

	Kubernetes    bool          `mapstructure:"kubernetes"`
	NodeName      string        `mapstructure:"node-name"`
	KubeletRoot   string        `mapstructure:"kubelet-root"`
	AllowEnforce  bool          `mapstructure:"allow-enforce"`
	Kubeconfig    string        `mapstructure:"kubeconfig"`
	EventInterval time.Duration `mapstructure:"event-interval"`
}

func (c *probeConfig) Validate() error {
	if _, err := bpf.ParseMode(c.Attach); err != nil {
		return fmt.Errorf("--attach: %w", err)
	}
	if c.Output != report.FormatJSON && c.Output != report.FormatText {
		return fmt.Errorf("--output %q: want json or text", c.Output)
	}
	if c.RateInterval < 0 {
		return errors.New("--rate-interval must not be negative")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if c.Kubernetes {
		if len(c.Watch) > 0 || len(c.Allow) > 0 || c.Enforce {
			return errors.New("--kubernetes takes the watch set from the pods: drop --watch, --allow and --enforce")
		}
		if c.NodeName == "" {
			return errors.New("--kubernetes needs --node-name (the DaemonSet sets it from spec.nodeName)")
		}
		return nil
	}
	if len(c.Watch) == 0 {
		return errors.New("give at least one --watch DIR (a tmpfs mount point), or --kubernetes")
	}
	return nil
}

func newProbeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Flag, and in enforce mode stop, unexpected reads of secret files (eBPF)",
		Long: `probe loads an eBPF program that watches the tmpfs mounts holding secrets and reports
every open of a file there by an executable that is not an allowed reader: one JSON object
per line on stdout. With --enforce the open is stopped (EPERM with BPF LSM; with the
tracepoint fallback the reader is killed before it returns to user space).

Standalone:  sidekey probe --watch /run/secrets --allow /usr/local/bin/app [--enforce]
Kubernetes:  sidekey probe --kubernetes --node-name $(NODE_NAME) [--allow-enforce]`,
		Args: cobra.NoArgs,
	}
	fs := withConfigFlag(cmd)
	fs.StringSlice("watch", nil, "tmpfs mount point to watch (repeatable)")
	fs.StringSlice("allow", nil, "executable allowed to read the watched files (repeatable)")
	fs.Bool("enforce", false, "stop reads by anyone else, instead of only reporting them")
	fs.String("attach", string(bpf.ModeAuto), "attach mode: auto (lsm, else tracepoint), lsm or tracepoint")
	fs.String("output", report.FormatJSON, "event output on stdout: json or text")
	fs.String("metrics-addr", "", "serve Prometheus /metrics on this address (e.g. :9090); off when empty")
	fs.Duration("rate-interval", bpf.DefaultRateInterval, "report one event per (reader, file) per interval, counting the rest; 0 reports all")
	fs.String("log-level", "info", "debug, info, warn or error")
	fs.Bool("kubernetes", false, "take the watch set from the injected pods of this node")
	fs.String("node-name", "", "this node's name (Kubernetes mode)")
	fs.String("kubelet-root", "/var/lib/kubelet", "the kubelet's root directory (Kubernetes mode)")
	fs.Bool("allow-enforce", false, "let pods annotated sidekey.io/probe: enforce be enforced (Kubernetes mode)")
	fs.String("kubeconfig", "", "kubeconfig file; in-cluster config when empty (Kubernetes mode)")
	fs.Duration("event-interval", time.Minute, "at most one Kubernetes Event per (pod, reader, file) per interval")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var cfg probeConfig
		if err := load(cmd, &cfg); err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return runProbe(ctx, cfg, cmd)
	}
	return cmd
}

func runProbe(ctx context.Context, cfg probeConfig, cmd *cobra.Command) error {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
	out, err := report.NewWriter(cmd.OutOrStdout(), cfg.Output)
	if err != nil {
		return err
	}
	mode, _ := bpf.ParseMode(cfg.Attach)

	// Check the standalone watch set before loading anything.
	var watches []policy.Watch
	if !cfg.Kubernetes {
		if watches, err = policy.Standalone(cfg.Watch, cfg.Allow, cfg.Enforce); err != nil {
			return &exitError{code: 2, err: err}
		}
	}
	var client kubernetes.Interface
	if cfg.Kubernetes {
		rc, err := restConfig(cfg.Kubeconfig)
		if err != nil {
			return fmt.Errorf("kubernetes config (--kubeconfig, or in-cluster): %w", err)
		}
		if client, err = kubernetes.NewForConfig(rc); err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
	}

	p, err := bpf.Load(bpf.Options{Mode: mode, RateInterval: cfg.RateInterval, Logger: log})
	if err != nil {
		return fmt.Errorf("load probe: %w", err)
	}
	defer p.Close()
	state := policy.NewState(p)
	for _, w := range watches {
		if _, err := state.Put(w.Dir, w); err != nil {
			return err
		}
	}
	collector := report.NewCollector(p, state.Len)

	var watcher *kube.Watcher
	var events *kube.Events
	errc := make(chan error, 3)
	if cfg.Kubernetes {
		watcher = kube.New(client, state, kube.Config{
			NodeName: cfg.NodeName, KubeletRoot: cfg.KubeletRoot, AllowEnforce: cfg.AllowEnforce, Scan: p.ScanOpenFiles,
		}, log)
		events = kube.NewEvents(client, cfg.NodeName, cfg.EventInterval)
		defer events.Shutdown()
		go func() { errc <- watcher.Run(ctx) }()
	}
	if cfg.MetricsAddr != "" {
		srv, err := serveMetrics(cfg.MetricsAddr, collector, log)
		if err != nil {
			return err
		}
		defer srv.Close()
	}

	enrich := func(ev bpf.Event) (policy.Watch, string) {
		w, _ := state.ByID(ev.WatchID)
		if watcher == nil || w.PodUID == "" {
			return w, ""
		}
		return w, watcher.ContainerOf(ev.PID, ev.ExeID, w.PodUID)
	}
	emit := func(r report.Record, w policy.Watch) {
		collector.Observe(r)
		if err := out.Write(r); err != nil {
			log.Error("write event", "err", err)
		}
		if events != nil {
			events.Report(r, w.PodUID)
		}
	}
	go func() { errc <- report.Pump(p, enrich, emit, log) }()
	if len(watches) > 0 {
		// Report files opened before the probe started (alerts, never kills).
		if err := p.ScanOpenFiles(); err != nil {
			log.Warn("scan for files opened before the probe", "err", err)
		}
	}

	log.Info("ready", "attach", p.Mode(), "watches", state.Len(), "enforce_kills", !p.CanDeny())
	select {
	case <-ctx.Done():
		log.Info("stopping", "reason", context.Cause(ctx))
		if err := p.Close(); err != nil {
			return fmt.Errorf("detach probe: %w", err)
		}
		return nil
	case err := <-errc:
		return err
	}
}

func serveMetrics(addr string, c prometheus.Collector, log *slog.Logger) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return srv, nil
}
