// Command sidekey-agent runs in every injected pod: as the init container it fetches the pod's
// secrets into its tmpfs, as the sidecar it keeps them fresh. It must not link client-go,
// gitleaks or cilium/ebpf.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/sidekey/sidekey/internal/config"
	"github.com/sidekey/sidekey/internal/version"
)

func main() {
	fs := pflag.NewFlagSet("sidekey-agent", pflag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: sidekey-agent [flags]\n\nFetches the secrets named in the spec (%s or --spec FILE) into a tmpfs and keeps them fresh.\n\nFlags:\n%s", "SIDEKEY_SPEC", fs.FlagUsages())
	}
	config.AddFileFlag(fs)
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == pflag.ErrHelp {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "sidekey-agent: %v\n", err)
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("sidekey-agent", version.String())
		return
	}
	fmt.Fprintln(os.Stderr, "sidekey-agent: not built yet")
	os.Exit(1)
}
