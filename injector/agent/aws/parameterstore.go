package aws

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/sidekey/sidekey/injector/agent"
	"github.com/sidekey/sidekey/injector/spec"
)

// The agent makes one SSM call, GetParameters. The SDK's ssm package would add 2.7 MB to a
// binary that runs in every pod (it keeps the schemas of all ~150 SSM operations), so this
// file speaks that one operation's JSON 1.1 wire protocol itself, with the SDK's credentials
// chain and SigV4 signer.

// ssmClient calls SSM GetParameters.
type ssmClient struct {
	cfg      awssdk.Config
	endpoint string
	signer   *v4.Signer
	http     awssdk.HTTPClient
}

func newSSMClient(cfg awssdk.Config) *ssmClient {
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &ssmClient{cfg: cfg, endpoint: ssmEndpoint(cfg), signer: v4.NewSigner(), http: hc}
}

// ssmEndpoint follows the SDK's precedence: AWS_ENDPOINT_URL_SSM, the configured base endpoint
// (AWS_ENDPOINT_URL or endpoint_url), then the regional endpoint (FIPS when asked).
func ssmEndpoint(cfg awssdk.Config) string {
	if u := os.Getenv("AWS_ENDPOINT_URL_SSM"); u != "" {
		return u
	}
	if cfg.BaseEndpoint != nil && *cfg.BaseEndpoint != "" {
		return *cfg.BaseEndpoint
	}
	host, suffix := "ssm", "amazonaws.com"
	if strings.EqualFold(os.Getenv("AWS_USE_FIPS_ENDPOINT"), "true") {
		host = "ssm-fips"
	}
	if strings.HasPrefix(cfg.Region, "cn-") {
		suffix = "amazonaws.com.cn"
	}
	return "https://" + host + "." + cfg.Region + "." + suffix
}

type ssmParameter struct {
	Name     string
	Value    string
	ARN      string
	Selector string
}

type getParametersOutput struct {
	Parameters        []ssmParameter
	InvalidParameters []string
}

// getParameters reads up to ten parameters, decrypted.
func (c *ssmClient) getParameters(ctx context.Context, names []string) (*getParametersOutput, error) {
	body, err := json.Marshal(map[string]any{"Names": names, "WithDecryption": true})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.endpoint, "/")+"/", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("ssm endpoint %s: %w", c.endpoint, err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "AmazonSSM.GetParameters")
	creds, err := c.cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return nil, fmt.Errorf("ssm GetParameters: get credentials: %w", err)
	}
	sum := sha256.Sum256(body)
	if err := c.signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "ssm", c.cfg.Region, time.Now().UTC()); err != nil {
		return nil, fmt.Errorf("ssm GetParameters: sign: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ssm GetParameters: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("ssm GetParameters: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		// The error body names a type and a message, never a parameter value.
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(b, &e)
		typ := e.Type
		if i := strings.LastIndexByte(typ, '#'); i >= 0 {
			typ = typ[i+1:]
		}
		if typ == "" {
			typ = resp.Header.Get("X-Amzn-ErrorType")
		}
		return nil, fmt.Errorf("ssm GetParameters: %s: %s (HTTP %d)", typ, e.Message, resp.StatusCode)
	}
	var out getParametersOutput
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("ssm GetParameters: decode answer: %w", err) // json errors quote no values
	}
	return &out, nil
}

// fetchSSM answers the SSM sources at idx with GetParameters, ten names a call, decrypted.
func (b *Backend) fetchSSM(ctx context.Context, srcs []spec.Source, idx []int, out []agent.Result) {
	for start := 0; start < len(idx); start += ssmBatch {
		part := idx[start:min(start+ssmBatch, len(idx))]
		names := make([]string, len(part))
		for k, i := range part {
			names[k] = srcs[i].Path
		}
		o, err := b.ssm.getParameters(ctx, names)
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
				if name == p.Name || name == p.ARN || name == p.Name+p.Selector {
					out[i].Doc = agent.Document{Raw: []byte(p.Value)}
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
