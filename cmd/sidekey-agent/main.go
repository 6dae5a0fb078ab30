// Command sidekey-agent runs in every injected pod: as the init container (--once) it fetches
// the pod's secrets into its tmpfs, as the sidecar it keeps them fresh. It must not link
// client-go, gitleaks, cilium/ebpf or controller-runtime.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/sidekey/sidekey/injector/agent"
	agentaws "github.com/sidekey/sidekey/injector/agent/aws"
	"github.com/sidekey/sidekey/injector/agent/vault"
	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/config"
	"github.com/sidekey/sidekey/internal/version"
)

// Config is the agent's configuration: flags, SIDEKEY_* env, --config file.
type Config struct {
	Spec        string        `mapstructure:"spec"`
	Once        bool          `mapstructure:"once"`
	InitTimeout time.Duration `mapstructure:"init-timeout"`
	AllowDisk   bool          `mapstructure:"allow-disk"`
	HealthAddr  string        `mapstructure:"health-addr"`
	LogLevel    string        `mapstructure:"log-level"`
	LogFormat   string        `mapstructure:"log-format"`
	CheckReady  bool          `mapstructure:"check-ready"`
	Version     bool          `mapstructure:"version"`
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	var errs []error
	if c.InitTimeout <= 0 {
		errs = append(errs, fmt.Errorf("init-timeout %s: must be positive", c.InitTimeout))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("log-format %q: want text or json", c.LogFormat))
	}
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole command; it returns the exit code. ctx ends on SIGTERM.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("sidekey-agent", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: sidekey-agent [flags]\n\nFetches the secrets named in the spec (JSON in %s, or --spec FILE) into a tmpfs and keeps them fresh.\n\nFlags:\n%s", spec.EnvVar, fs.FlagUsages())
	}
	config.AddFileFlag(fs)
	fs.String("spec", "", "spec file (JSON); default: the JSON in "+spec.EnvVar+"; env "+config.Env("spec"))
	fs.Bool("once", false, "init container mode: write every secret, then exit (non-zero, naming what failed, after --init-timeout)")
	fs.Duration("init-timeout", 2*time.Minute, "how long --once keeps retrying before it gives up")
	fs.Bool("allow-disk", false, "allow writing to a directory that is not tmpfs/ramfs (local development only)")
	fs.String("health-addr", "", "loopback address of /healthz, /readyz and /metrics (default: the spec's, else "+spec.DefaultHealthAddr+")")
	fs.String("log-level", "info", "debug, info, warn or error")
	fs.String("log-format", "text", "text or json")
	fs.Bool("check-ready", false, "exit 0 if the agent at the health address is ready, else 1 (startup probe)")
	fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	var cfg Config
	if err := config.Load(fs, &cfg); err != nil {
		fmt.Fprintf(stderr, "sidekey-agent: %v\n", err)
		return 2
	}
	if cfg.Version {
		fmt.Fprintln(stdout, "sidekey-agent", version.String())
		return 0
	}
	if cfg.CheckReady {
		return checkReady(ctx, cfg, stderr)
	}
	level, _ := parseLevel(cfg.LogLevel)
	var h slog.Handler = slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(h)
	if err := serve(ctx, cfg, log); err != nil {
		if cfg.LogFormat == "json" {
			log.Error("sidekey-agent failed", "err", err)
		} else {
			fmt.Fprintf(stderr, "sidekey-agent: %v\n", err)
		}
		return 1
	}
	return 0
}

// serve loads the spec, builds the backends and runs the agent in the mode asked for.
func serve(ctx context.Context, cfg Config, log *slog.Logger) error {
	s, err := spec.Load(cfg.Spec)
	if err != nil {
		return err
	}
	backends, err := newBackends(ctx, s, log)
	if err != nil {
		return err
	}
	w, err := agent.NewWriter(s.MountPath, cfg.AllowDisk)
	if err != nil {
		return err
	}
	defer w.Close()
	if cfg.AllowDisk {
		if agent.CheckMemoryFS(s.MountPath) != nil {
			log.Warn("writing secrets to a disk-backed directory (--allow-disk); for local development only", "dir", s.MountPath)
		}
	}
	notify, err := agent.NewNotifier(s.OnChange)
	if err != nil {
		return err
	}
	a, err := agent.New(s, backends, agent.Options{Logger: log, Writer: w, Notify: notify})
	if err != nil {
		return err
	}
	once := cfg.Once || s.Mode == spec.ModeInitOnly
	if once {
		if err := a.Once(ctx, cfg.InitTimeout); err != nil {
			return fmt.Errorf("not every secret could be written:\n%w", indent(err))
		}
		log.Info("all secrets written", "count", len(s.Secrets))
		return nil
	}
	addr := healthAddr(cfg, s)
	bound, done, err := agent.Serve(ctx, addr, a.Metrics().Handler(), log)
	if err != nil {
		return err
	}
	log.Info("sidecar started", "secrets", len(s.Secrets), "refresh", time.Duration(s.Refresh), "health", bound.String())
	runErr := a.Run(ctx)
	if err := <-done; err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("health server: %w", err))
	}
	log.Info("sidecar stopped")
	return runErr
}

// indent puts each joined error on its own indented line.
func indent(err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return errors.New(strings.Join(lines, "\n"))
}

func newBackends(ctx context.Context, s *spec.Spec, log *slog.Logger) (map[string]agent.Backend, error) {
	need := map[string]bool{}
	for _, sec := range s.Secrets {
		for _, src := range sec.All() {
			need[src.Backend] = true
		}
	}
	out := map[string]agent.Backend{}
	if need[spec.BackendVault] {
		vb, err := vault.New(*s.Vault, vault.Options{Logger: log, Token: os.Getenv("VAULT_TOKEN")})
		if err != nil {
			return nil, err
		}
		out[spec.BackendVault] = vb
	}
	if need[spec.BackendAWSSM] || need[spec.BackendAWSSSM] {
		var ac spec.AWS
		if s.AWS != nil {
			ac = *s.AWS
		}
		ab, err := agentaws.New(ctx, ac, log)
		if err != nil {
			return nil, err
		}
		out[spec.BackendAWSSM] = ab
		out[spec.BackendAWSSSM] = ab
	}
	return out, nil
}

func healthAddr(cfg Config, s *spec.Spec) string {
	if cfg.HealthAddr != "" {
		return cfg.HealthAddr
	}
	if s != nil && s.HealthAddr != "" {
		return s.HealthAddr
	}
	return spec.DefaultHealthAddr
}

// checkReady is the startup probe: it reads only the health address from the spec.
func checkReady(ctx context.Context, cfg Config, stderr io.Writer) int {
	var s *spec.Spec
	if cfg.HealthAddr == "" {
		s = &spec.Spec{}
		var b []byte
		if cfg.Spec != "" {
			b, _ = os.ReadFile(cfg.Spec)
		} else {
			b = []byte(os.Getenv(spec.EnvVar))
		}
		_ = json.Unmarshal(b, s) // only healthAddr matters; a bad spec falls back to the default
	}
	addr := healthAddr(cfg, s)
	if err := agent.CheckReady(ctx, addr); err != nil {
		fmt.Fprintf(stderr, "sidekey-agent: %v\n", err)
		return 1
	}
	return 0
}
