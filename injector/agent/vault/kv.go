package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	gopath "path"
	"strings"

	vapi "github.com/hashicorp/vault/api"
)

// mountOf finds the mount of a path and its KV version the way the Vault CLI does
// (command/kv_helpers.go, kvPreflightVersionRequest): GET sys/internal/ui/mounts/<path>; a 404
// means a Vault too old to say, which is KV v1. Results are cached per path.
func (b *Backend) mountOf(ctx context.Context, p string) (mount, error) {
	if m, ok := b.mounts[p]; ok {
		return m, nil
	}
	r := b.client.NewRequest(http.MethodGet, "/v1/sys/internal/ui/mounts/"+p)
	resp, err := b.client.RawRequestWithContext(ctx, r)
	if resp != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusNotFound {
			m := mount{version: 1}
			b.mounts[p] = m
			return m, nil
		}
		return mount{}, fmt.Errorf("find the mount of %s: %w", p, describe(err))
	}
	s, err := vapi.ParseSecret(resp.Body)
	if err != nil {
		return mount{}, fmt.Errorf("find the mount of %s: parse answer: %w", p, err)
	}
	if s == nil {
		return mount{}, errors.New("find the mount of " + p + ": empty answer")
	}
	m := parseMount(s.Data)
	b.mounts[p] = m
	return m, nil
}

// parseMount reads the preflight answer's data: {"path": "secret/", "options": {"version": "2"}}.
func parseMount(data map[string]any) mount {
	m := mount{version: 1}
	m.path, _ = data["path"].(string)
	if opts, ok := data["options"].(map[string]any); ok {
		if v, _ := opts["version"].(string); v == "2" {
			m.version = 2
		}
	}
	return m
}

// kvDataPath inserts data/ after the mount of a KV v2 path, unless the user already wrote it,
// as the Vault CLI's addPrefixToKVPath does with skipIfExists (mountPath may carry namespace
// parts the path does not).
func kvDataPath(p, mountPath string) string {
	const prefix = "data"
	if p == mountPath || p == strings.TrimSuffix(mountPath, "/") {
		return gopath.Join(mountPath, prefix)
	}
	suffix := strings.TrimPrefix(p, mountPath)
	for suffix == p {
		parts := strings.SplitN(mountPath, "/", 2)
		if len(parts) <= 1 || parts[1] == "" {
			break
		}
		mountPath = strings.TrimSuffix(parts[1], "/")
		suffix = strings.TrimPrefix(suffix, mountPath)
	}
	if strings.HasPrefix(suffix, prefix+"/") || strings.HasPrefix(suffix, "/"+prefix+"/") || suffix == prefix || suffix == "/"+prefix {
		return p
	}
	return gopath.Join(mountPath, prefix, suffix)
}
