package aws

import (
	"context"
	"fmt"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/sidekey/sidekey/injector/agent"
	"github.com/sidekey/sidekey/injector/spec"
)

// fetchSM answers the Secrets Manager sources at idx: cached ones whose version id did not
// change are not downloaded again; the rest are downloaded, current ones in batches.
func (b *Backend) fetchSM(ctx context.Context, srcs []spec.Source, idx []int, out []agent.Result) {
	type want struct {
		i         int
		versionID string // from DescribeSecret; "" when unknown
	}
	var batch, single []want
	for _, i := range idx {
		src := srcs[i]
		stage := src.VersionStage
		if stage == "" {
			stage = defaultStage
		}
		if c, ok := b.cache[src]; ok {
			vid, err := b.currentVersion(ctx, src.Path, stage)
			if err != nil {
				out[i].Err = fmt.Errorf("describe %s: %w", src, err)
				continue
			}
			if vid == c.versionID {
				out[i].Doc = c.doc
				continue
			}
			b.log.Info("secret has a new version", "source", src.String())
			single = append(single, want{i, vid})
			continue
		}
		if stage == defaultStage {
			batch = append(batch, want{i: i})
		} else {
			single = append(single, want{i: i})
		}
	}
	if len(batch) == 1 {
		single, batch = append(single, batch...), nil
	}
	for start := 0; start < len(batch); start += smBatch {
		part := batch[start:min(start+smBatch, len(batch))]
		ids := make([]string, len(part))
		for k, w := range part {
			ids[k] = srcs[w.i].Path
		}
		got, errs, err := b.batchGet(ctx, ids)
		if err != nil {
			// e.g. no secretsmanager:BatchGetSecretValue permission: read them one by one.
			b.log.Debug("batch read failed; reading one by one", "err", err)
			single = append(single, part...)
			continue
		}
		for k, w := range part {
			src := srcs[w.i]
			if e, ok := errs[ids[k]]; ok {
				out[w.i].Err = fmt.Errorf("read %s: %s", src, e)
				continue
			}
			v, ok := got[ids[k]]
			if !ok {
				out[w.i].Err = fmt.Errorf("read %s: not in the batch answer", src)
				continue
			}
			b.cache[src] = v
			out[w.i].Doc = v.doc
		}
	}
	for _, w := range single {
		src := srcs[w.i]
		in := &secretsmanager.GetSecretValueInput{SecretId: awssdk.String(src.Path)}
		if w.versionID != "" {
			in.VersionId = awssdk.String(w.versionID)
		} else if src.VersionStage != "" {
			in.VersionStage = awssdk.String(src.VersionStage)
		}
		o, err := b.sm.GetSecretValue(ctx, in)
		if err != nil {
			out[w.i].Err = fmt.Errorf("read %s: %w", src, err)
			continue
		}
		c := cached{versionID: awssdk.ToString(o.VersionId), doc: docFromSM(o.SecretString, o.SecretBinary)}
		b.cache[src] = c
		out[w.i].Doc = c.doc
	}
}

// currentVersion returns the version id that carries stage, from the secret's metadata only.
func (b *Backend) currentVersion(ctx context.Context, id, stage string) (string, error) {
	o, err := b.sm.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: awssdk.String(id)})
	if err != nil {
		return "", err
	}
	for vid, stages := range o.VersionIdsToStages {
		for _, s := range stages {
			if s == stage {
				return vid, nil
			}
		}
	}
	return "", fmt.Errorf("no version has stage %s", stage)
}

// batchGet reads the current versions of ids with BatchGetSecretValue, following pages. It
// returns values and per-secret errors keyed by the id as asked (name or ARN).
func (b *Backend) batchGet(ctx context.Context, ids []string) (map[string]cached, map[string]string, error) {
	got, errs := map[string]cached{}, map[string]string{}
	match := func(name, arn *string) string {
		for _, id := range ids {
			if id == awssdk.ToString(name) || id == awssdk.ToString(arn) {
				return id
			}
		}
		return ""
	}
	in := &secretsmanager.BatchGetSecretValueInput{SecretIdList: ids}
	for {
		o, err := b.sm.BatchGetSecretValue(ctx, in)
		if err != nil {
			return nil, nil, err
		}
		for _, v := range o.SecretValues {
			if id := match(v.Name, v.ARN); id != "" {
				got[id] = cached{versionID: awssdk.ToString(v.VersionId), doc: docFromSM(v.SecretString, v.SecretBinary)}
			}
		}
		for _, e := range o.Errors {
			id := awssdk.ToString(e.SecretId)
			errs[id] = awssdk.ToString(e.ErrorCode) + ": " + awssdk.ToString(e.Message)
		}
		if awssdk.ToString(o.NextToken) == "" {
			return got, errs, nil
		}
		in.NextToken = o.NextToken
	}
}
