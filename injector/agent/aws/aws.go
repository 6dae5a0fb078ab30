// Package aws is sidekey-agent's AWS backend: Secrets Manager (name or ARN, version stage,
// JSON keys) and SSM Parameter Store (decrypted). Credentials come from the SDK's default
// chain, so IRSA (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE) and EKS Pod Identity work; the
// spec's role ARN and token path are used when the environment does not set them.
//
// Refresh is cheap: a Secrets Manager secret is downloaded again only when DescribeSecret
// shows a new version id for its stage, current versions are fetched together with
// BatchGetSecretValue, and SSM parameters are read ten at a time with GetParameters.
package aws

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/sidekey/sidekey/injector/agent"
	"github.com/sidekey/sidekey/injector/spec"
)

// defaultStage is the version stage Secrets Manager serves when none is named.
const defaultStage = "AWSCURRENT"

// ssmBatch and smBatch are the most names GetParameters and BatchGetSecretValue take at once.
const (
	ssmBatch = 10
	smBatch  = 20
)

// Backend reads from Secrets Manager and SSM in one account and region. One goroutine at a time.
type Backend struct {
	sm  *secretsmanager.Client
	ssm *ssmClient
	log *slog.Logger

	cache map[spec.Source]cached // Secrets Manager documents by source (no key)
}

type cached struct {
	versionID string
	doc       agent.Document
}

// New loads the SDK's default configuration (region, credentials) and returns a Backend.
func New(ctx context.Context, cfg spec.AWS, log *slog.Logger) (*Backend, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	ac, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws config: %w", err)
	}
	if ac.Region == "" {
		return nil, errors.New("aws: no region: set aws.region in the spec or AWS_REGION")
	}
	// IRSA: the webhook's AWS_ROLE_ARN / AWS_WEB_IDENTITY_TOKEN_FILE, else the spec's. Built
	// here rather than left to the default chain so that the STS client comes from the fully
	// loaded config and honours endpoint settings (AWS_ENDPOINT_URL_STS, AWS_ENDPOINT_URL).
	// Static keys in the environment still win, as in the default chain; EKS Pod Identity and
	// the rest of the chain apply when no role is given.
	roleARN := cmp.Or(os.Getenv("AWS_ROLE_ARN"), cfg.RoleARN)
	tokenFile := cmp.Or(os.Getenv("AWS_WEB_IDENTITY_TOKEN_FILE"), cfg.TokenPath)
	if roleARN != "" && tokenFile != "" && os.Getenv("AWS_ACCESS_KEY_ID") == "" {
		session := cmp.Or(os.Getenv("AWS_ROLE_SESSION_NAME"), "sidekey-agent")
		ac.Credentials = awssdk.NewCredentialsCache(stscreds.NewWebIdentityRoleProvider(
			sts.NewFromConfig(ac), roleARN, stscreds.IdentityTokenFile(tokenFile),
			func(o *stscreds.WebIdentityRoleOptions) { o.RoleSessionName = session },
		))
	}
	return &Backend{
		sm:    secretsmanager.NewFromConfig(ac),
		ssm:   newSSMClient(ac),
		log:   log.With("backend", "aws"),
		cache: map[spec.Source]cached{},
	}, nil
}

// Fetch implements agent.Backend for aws-sm and aws-ssm sources.
func (b *Backend) Fetch(ctx context.Context, srcs []spec.Source) []agent.Result {
	out := make([]agent.Result, len(srcs))
	var sm, ps []int
	for i, s := range srcs {
		switch s.Backend {
		case spec.BackendAWSSM:
			sm = append(sm, i)
		case spec.BackendAWSSSM:
			ps = append(ps, i)
		default:
			out[i].Err = fmt.Errorf("aws backend cannot read %s", s)
		}
	}
	b.fetchSM(ctx, srcs, sm, out)
	b.fetchSSM(ctx, srcs, ps, out)
	return out
}

// docFromSM makes a document of a Secrets Manager value: Raw always, Data when it is a JSON object.
func docFromSM(str *string, bin []byte) agent.Document {
	if str == nil {
		return agent.Document{Raw: bin}
	}
	d := agent.Document{Raw: []byte(*str)}
	var m map[string]any
	if json.Unmarshal(d.Raw, &m) == nil && m != nil {
		d.Data = m
	}
	return d
}
