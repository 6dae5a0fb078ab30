// Command sidekey is the operator- and CI-facing binary: the admission webhook, offline
// injection, the image secret detector and the eBPF probe.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sidekey/sidekey/internal/config"
	"github.com/sidekey/sidekey/internal/version"
)

// exitError carries a process exit code other than 1 out of a subcommand.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	root := &cobra.Command{
		Use:   "sidekey",
		Short: "Keep credentials out of container images and off disk",
		Long: `sidekey delivers secrets into a per-pod tmpfs (webhook, inject), rejects images that
carry secrets (detect), and watches who reads the delivered files (probe).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String(),
	}
	root.AddCommand(newWebhookCmd(), newInjectCmd(), newDetectCmd(), newProbeCmd(), newVersionCmd())
	if err := root.Execute(); err != nil {
		code := 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		if ee == nil || ee.err != nil {
			fmt.Fprintf(os.Stderr, "sidekey: %v\n", err)
		}
		os.Exit(code)
	}
}

// load reads the command's configuration (flags, SIDEKEY_* env, --config file) into cfg.
func load(cmd *cobra.Command, cfg any) error {
	return config.Load(cmd.Flags(), cfg)
}

// withConfigFlag adds --config to a subcommand's flags and returns them.
func withConfigFlag(cmd *cobra.Command) *pflag.FlagSet {
	fs := cmd.Flags()
	config.AddFileFlag(fs)
	return fs
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "sidekey", version.String())
		},
	}
}
