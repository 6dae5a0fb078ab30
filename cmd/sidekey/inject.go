package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newInjectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inject",
		Short: "Inject the sidekey agent into Kubernetes manifests offline (-f FILE|-)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("inject: not built yet")
		},
	}
	withConfigFlag(cmd)
	return cmd
}
