package aws

import (
	"context"
	"fmt"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/sidekey/sidekey/injector/agent"
	"github.com/sidekey/sidekey/injector/spec"
)

// fetchSSM answers the SSM sources at idx with GetParameters, ten names a call, decrypted.
func (b *Backend) fetchSSM(ctx context.Context, srcs []spec.Source, idx []int, out []agent.Result) {
	for start := 0; start < len(idx); start += ssmBatch {
		part := idx[start:min(start+ssmBatch, len(idx))]
		names := make([]string, len(part))
		for k, i := range part {
			names[k] = srcs[i].Path
		}
		o, err := b.ssm.GetParameters(ctx, &ssm.GetParametersInput{Names: names, WithDecryption: awssdk.Bool(true)})
		if err != nil {
			for _, i := range part {
				out[i].Err = fmt.Errorf("read %s: %w", srcs[i], err)
			}
			continue
		}
		invalid := map[string]bool{}
		for _, n := range o.InvalidParameters {
			invalid[n] = true
		}
		for k, i := range part {
			name := names[k]
			if invalid[name] {
				out[i].Err = fmt.Errorf("read %s: no such parameter (or no permission to read it)", srcs[i])
				continue
			}
			found := false
			for _, p := range o.Parameters {
				pn := awssdk.ToString(p.Name)
				if name == pn || name == awssdk.ToString(p.ARN) || name == pn+awssdk.ToString(p.Selector) {
					out[i].Doc = agent.Document{Raw: []byte(awssdk.ToString(p.Value))}
					found = true
					break
				}
			}
			if !found {
				out[i].Err = fmt.Errorf("read %s: not in the answer", srcs[i])
			}
		}
	}
}
