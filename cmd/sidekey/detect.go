package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sidekey/sidekey/detector"
	"github.com/sidekey/sidekey/detector/archive"
	"github.com/sidekey/sidekey/detector/credfile"
	"github.com/sidekey/sidekey/detector/dockerfile"
	"github.com/sidekey/sidekey/detector/match"
	"github.com/sidekey/sidekey/detector/report"
	"github.com/sidekey/sidekey/detector/rules"
	"github.com/sidekey/sidekey/detector/source"
)

// detectConfig is the configuration of every `sidekey detect` subcommand.
type detectConfig struct {
	Format           string        `mapstructure:"format"`
	Output           string        `mapstructure:"output"`
	FailOn           []string      `mapstructure:"fail-on"`
	Rules            string        `mapstructure:"rules"`
	IgnoreFile       string        `mapstructure:"ignore-file"`
	Baseline         string        `mapstructure:"baseline"`
	ScanBinaries     bool          `mapstructure:"scan-binaries"`
	MaxArchiveDepth  int           `mapstructure:"max-archive-depth"`
	MaxArchiveBytes  int64         `mapstructure:"max-archive-bytes"`
	MaxArchiveRatio  int64         `mapstructure:"max-archive-ratio"`
	MaxZipBytes      int64         `mapstructure:"max-zip-bytes"`
	Timeout          time.Duration `mapstructure:"timeout"`
	Workers          int           `mapstructure:"workers"`
	InsecureRegistry bool          `mapstructure:"insecure-registry"`
	Platform         string        `mapstructure:"platform"`
	Color            string        `mapstructure:"color"`
	Progress         string        `mapstructure:"progress"`

	format report.Format
	failOn []report.Status
}

// Validate checks the values flags cannot check themselves.
func (c *detectConfig) Validate() error {
	f, err := report.ParseFormat(c.Format)
	if err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	c.format = f
	c.failOn = nil
	for _, s := range c.FailOn {
		for _, part := range strings.Split(s, ",") {
			if strings.TrimSpace(part) == "" {
				continue
			}
			st, err := report.ParseStatus(part)
			if err != nil {
				return fmt.Errorf("--fail-on: %w", err)
			}
			c.failOn = append(c.failOn, st)
		}
	}
	for flag, v := range map[string]string{"--color": c.Color, "--progress": c.Progress} {
		switch v {
		case "auto", "always", "never":
		default:
			return fmt.Errorf("%s: %q is not auto, always or never", flag, v)
		}
	}
	if c.MaxArchiveDepth < 0 || c.MaxArchiveBytes < 0 || c.MaxArchiveRatio < 0 || c.MaxZipBytes < 0 || c.Workers < 0 {
		return errors.New("--max-archive-*, --max-zip-bytes and --workers must not be negative")
	}
	if c.Platform != "" && !strings.Contains(c.Platform, "/") {
		return fmt.Errorf("--platform: %q is not OS/ARCH", c.Platform)
	}
	return nil
}

func addDetectFlags(fs *pflag.FlagSet) {
	l := archive.DefaultLimits
	fs.String("format", "text", "report format: text, json or sarif (SARIF 2.1.0)")
	fs.StringP("output", "o", "", "write the report to this file instead of stdout")
	fs.StringSlice("fail-on", []string{"present", "deleted", "overwritten", "metadata"}, "statuses that fail the run (exit 1)")
	fs.String("rules", "", "gitleaks-format TOML rules file; with [extend] useDefault = true it extends the default rules, otherwise it replaces them")
	fs.String("ignore-file", ".sidekeyignore", "file of finding fingerprints to ignore, one per line")
	fs.String("baseline", "", "previous JSON report: its findings are known and do not fail the run")
	fs.Bool("scan-binaries", false, "also scan files that look binary")
	fs.Int("max-archive-depth", l.MaxDepth, "how many levels of nested archives to open")
	fs.Int64("max-archive-bytes", l.MaxExpanded, "bytes expanded from one file's nested archives before giving up")
	fs.Int64("max-archive-ratio", l.MaxRatio, "largest expansion ratio of a compressed stream (zip bomb guard)")
	fs.Int64("max-zip-bytes", l.MaxZipBytes, "largest zip/jar held in memory to read its members")
	fs.Duration("timeout", 0, "give up after this long (exit 2); 0 for no limit")
	fs.Int("workers", 0, "matching goroutines and layers read at once (0: number of CPUs)")
	fs.Bool("insecure-registry", false, "allow plain-HTTP registries")
	fs.String("platform", "", "OS/ARCH to pick from a multi-platform image (default linux/this machine's architecture)")
	fs.String("color", "auto", "colour text output: auto (on a terminal), always or never")
	fs.String("progress", "auto", "progress bar on stderr: auto (on a terminal), always or never")
}

func newDetectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "detect",
		Short: "Find secrets baked into container images, directories and Dockerfiles",
		Long: `detect scans every layer of an image (including files later layers deleted or
overwrote), the image config (Env, Labels, build arguments in the history) and archives
inside layers, with gitleaks' default rules plus sidekey's credential-file rules.

Exit codes: 0 no findings, 1 findings (of the --fail-on statuses), 2 the scan could not
complete (unreadable image, corrupt layer, archive limits, --timeout).`,
	}
	cmd.AddCommand(newDetectImageCmd(), newDetectDirCmd(), newDetectDockerfileCmd())
	return cmd
}

func newDetectImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image REF",
		Short: "Scan an image: docker-archive:PATH, oci:DIR, oci-archive:PATH, registry:REF, REF or a path",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDetect(cmd, func(ctx context.Context, cfg *detectConfig, d *detector.Detector) (*report.Report, error) {
				opts := source.Options{Insecure: cfg.InsecureRegistry}
				if cfg.Platform != "" {
					goos, arch, _ := strings.Cut(cfg.Platform, "/")
					opts.Platform = &v1.Platform{OS: goos, Architecture: arch}
				}
				img, err := source.Open(ctx, args[0], opts)
				if err != nil {
					return nil, err
				}
				defer img.Close()
				return d.ScanImage(ctx, img, img.Name)
			})
		},
	}
	addDetectFlags(withConfigFlag(cmd))
	return cmd
}

func newDetectDirCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dir PATH",
		Short: "Scan a directory tree",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDetect(cmd, func(ctx context.Context, _ *detectConfig, d *detector.Detector) (*report.Report, error) {
				return d.ScanDir(ctx, args[0])
			})
		},
	}
	addDetectFlags(withConfigFlag(cmd))
	return cmd
}

func newDetectDockerfileCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dockerfile PATH",
		Short: "Check a Dockerfile: secrets in ENV/ARG/LABEL, COPY of credential files",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDetect(cmd, func(ctx context.Context, _ *detectConfig, d *detector.Detector) (*report.Report, error) {
				data, err := os.ReadFile(args[0])
				if err != nil {
					return nil, fmt.Errorf("read Dockerfile: %w", err)
				}
				return dockerfile.Check(d.Engine(), args[0], data), nil
			})
		},
	}
	addDetectFlags(withConfigFlag(cmd))
	return cmd
}

type scanFunc func(ctx context.Context, cfg *detectConfig, d *detector.Detector) (*report.Report, error)

// runDetect loads the config, builds the rules once (away from the config's viper), runs
// scan, applies ignore file and baseline, writes the report and turns the result into the
// exit code.
func runDetect(cmd *cobra.Command, scan scanFunc) error {
	var cfg detectConfig
	if err := load(cmd, &cfg); err != nil {
		return &exitError{code: 2, err: err}
	}
	ruleset, err := rules.Load(cfg.Rules)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	ignore, err := report.ReadIgnoreFile(cfg.IgnoreFile)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	var baseline report.Ignore
	if cfg.Baseline != "" {
		if baseline, err = report.ReadBaseline(cfg.Baseline); err != nil {
			return &exitError{code: 2, err: err}
		}
	}
	stderr := cmd.ErrOrStderr()
	opts := detector.Options{
		ScanBinaries: cfg.ScanBinaries,
		Workers:      cfg.Workers,
		Limits: archive.Limits{MaxDepth: cfg.MaxArchiveDepth, MaxExpanded: cfg.MaxArchiveBytes,
			MaxRatio: cfg.MaxArchiveRatio, MaxZipBytes: cfg.MaxZipBytes},
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	}
	bar := newProgressBar(stderr, cfg.Progress)
	if bar != nil {
		opts.Progress = bar.update
	}
	d := detector.New(match.New(ruleset, credfile.All()...), opts)

	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	r, err := scan(ctx, &cfg, d)
	bar.clear()
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	r.Drop(ignore, baseline)

	out := cmd.OutOrStdout()
	if cfg.Output != "" {
		f, err := os.Create(cfg.Output)
		if err != nil {
			return &exitError{code: 2, err: fmt.Errorf("--output: %w", err)}
		}
		defer f.Close()
		out = f
	}
	if err := r.Write(out, cfg.format, useColor(out, cfg.Color)); err != nil {
		return &exitError{code: 2, err: fmt.Errorf("write report: %w", err)}
	}
	if r.Incomplete() {
		return &exitError{code: 2, err: fmt.Errorf("scan incomplete: %d problem(s), see the report", len(r.Problems))}
	}
	if failing := r.Failing(cfg.failOn); len(failing) > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d finding(s) with status in --fail-on", len(failing))}
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

func useColor(w io.Writer, mode string) bool {
	switch mode {
	case "always":
		return true
	case "never":
		return false
	}
	return isTerminal(w) && os.Getenv("NO_COLOR") == ""
}

// progressBar draws one status line on a terminal's stderr.
type progressBar struct {
	w     io.Writer
	shown bool
}

func newProgressBar(w io.Writer, mode string) *progressBar {
	if mode == "never" || (mode == "auto" && !isTerminal(w)) {
		return nil
	}
	return &progressBar{w: w}
}

func (b *progressBar) update(p detector.Progress) {
	if p.Elapsed < 2*time.Second {
		return // short scans stay quiet
	}
	b.shown = true
	line := fmt.Sprintf("scanning: %d files, %.0f MiB", p.Files, float64(p.Bytes)/(1<<20))
	if p.Layers > 0 {
		const width = 20
		done := width * p.LayersDone / p.Layers
		line = fmt.Sprintf("[%s%s] %d/%d layers, %s", strings.Repeat("#", done), strings.Repeat(".", width-done), p.LayersDone, p.Layers, line[len("scanning: "):])
	}
	fmt.Fprintf(b.w, "\r\x1b[K%s  %.0fs", line, p.Elapsed.Seconds())
}

func (b *progressBar) clear() {
	if b != nil && b.shown {
		fmt.Fprint(b.w, "\r\x1b[K")
	}
}
