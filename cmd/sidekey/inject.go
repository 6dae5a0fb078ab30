package main

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/sidekey/sidekey/injector"
)

type injectConfig struct {
	mutationFlags `mapstructure:",squash"`
	Filename      string `mapstructure:"filename"`
	Output        string `mapstructure:"output"`
}

func newInjectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inject -f FILE|-",
		Short: "Inject the sidekey agent into Kubernetes manifests offline (-f FILE|-)",
		Long: `Run the webhook's mutation on manifests and print them as YAML: Pods, Deployments,
StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs, multi-document YAML and Lists. Objects
without sidekey.io/inject: "true" pass through unchanged. Bad sidekey.io/* annotations are
reported (naming the document, the object and the annotation) and nothing is printed.

For GitOps review ("what will the webhook do to this?") and for clusters without the webhook:

  sidekey inject -f deploy.yaml | kubectl apply -f -

Offline there is no API server: --native-sidecars defaults to true (Kubernetes >= 1.29), and
the IRSA role must be given with sidekey.io/aws-role-arn (the ServiceAccount is not read).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg injectConfig
			if err := load(cmd, &cfg); err != nil {
				return err
			}
			return runInject(cmd, &cfg)
		},
	}
	fs := withConfigFlag(cmd)
	fs.StringP("filename", "f", "", "manifest file to read, - for standard input")
	fs.StringP("output", "o", "", "file to write (default standard output)")
	addMutationFlags(fs, "true")
	return cmd
}

func runInject(cmd *cobra.Command, c *injectConfig) error {
	var in io.Reader
	switch c.Filename {
	case "":
		return fmt.Errorf("-f: name a manifest file, or - for standard input")
	case "-":
		in = cmd.InOrStdin()
	default:
		f, err := os.Open(c.Filename)
		if err != nil {
			return fmt.Errorf("-f: %w", err)
		}
		defer f.Close()
		in = f
	}
	var native bool
	switch c.NativeSidecars {
	case "true", "auto":
		native = true
	case "false":
	default:
		return fmt.Errorf("--native-sidecars %q: want true or false", c.NativeSidecars)
	}
	mcfg, err := c.config(native)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	results, err := injector.InjectManifests(in, &out, mcfg)
	if err != nil {
		return err
	}
	injected := 0
	for _, r := range results {
		if r.Injected {
			injected++
		}
		for _, w := range r.Warnings {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: document %d (%s %s): %s\n", r.Document, r.Kind, r.Name, w)
		}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "sidekey: injected %d of %d pod templates\n", injected, len(results))
	if c.Output == "" {
		_, err = cmd.OutOrStdout().Write(out.Bytes())
		return err
	}
	return os.WriteFile(c.Output, out.Bytes(), 0o644)
}
