package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newProbeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Flag, and in enforce mode stop, unexpected reads of secret files (eBPF)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("probe: not built yet")
		},
	}
	withConfigFlag(cmd)
	return cmd
}
