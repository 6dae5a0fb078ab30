package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newWebhookCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "webhook",
		Short: "Run the mutating admission webhook that injects the sidekey agent into annotated pods",
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("webhook: not built yet")
		},
	}
	withConfigFlag(cmd)
	return cmd
}
