package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newDetectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "detect",
		Short: "Find secrets baked into container images, directories and Dockerfiles",
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("detect: not built yet")
		},
	}
	withConfigFlag(cmd)
	return cmd
}
