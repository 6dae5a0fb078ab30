package aws

// No real AWS service exists here: these tests talk to fakeAWS (fakeaws_test.go), an HTTP
// server in the test that speaks the real Secrets Manager / SSM (JSON 1.1) and STS (query/XML)
// wire protocols to the real SDK and verifies the SigV4 signature of every request. The
// web-identity token is a real service-account token from a real kube-apiserver, verified by
// fakeAWS against the API server's real OIDC discovery and JWKS.

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/google/go-cmp/cmp"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/sidekey/sidekey/injector/agent"
	"github.com/sidekey/sidekey/injector/agent/agenttest"
	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/testenv"
)

const (
	region  = "eu-west-1"
	roleARN = "arn:aws:iam::111122223333:role/app"
)

// cluster is a real API server with service accounts demo/app and demo/other.
type cluster struct {
	cfg *rest.Config
	cs  *kubernetes.Clientset
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	cfg := testenv.StartAPIServer(t)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"app", "other"} {
		if _, err := cs.CoreV1().ServiceAccounts("demo").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return &cluster{cfg: cfg, cs: cs}
}

// token gets a service-account token through the TokenRequest API and writes it to a file, as
// the kubelet projects it.
func (c *cluster) token(t *testing.T, sa, audience string) string {
	t.Helper()
	exp := int64(3600)
	tr, err := c.cs.CoreV1().ServiceAccounts("demo").CreateToken(t.Context(), sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s: %v", sa, err)
	}
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// isolateAWSEnv points the SDK's default chain at the test server and nothing else.
func isolateAWSEnv(t *testing.T, endpoint string) {
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": region, "AWS_EC2_METADATA_DISABLED": "true",
		"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
		"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "",
		"AWS_ROLE_ARN": "", "AWS_WEB_IDENTITY_TOKEN_FILE": "", "AWS_CONTAINER_CREDENTIALS_FULL_URI": "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "", "AWS_MAX_ATTEMPTS": "1",
	} {
		t.Setenv(k, v)
	}
}

var src = agenttest.Source

func TestAWSWithIRSA(t *testing.T) {
	c := startCluster(t)
	httpc, err := rest.HTTPClientFor(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	oidc, err := newOIDCVerifier(httpc, c.cfg.Host)
	if err != nil {
		t.Fatalf("OIDC discovery of the real API server: %v", err)
	}
	fake := newFakeAWS(t, region)
	fake.oidc, fake.roleARN, fake.wantSub = oidc, roleARN, "system:serviceaccount:demo:app"
	srv := httptest.NewServer(fake)
	defer srv.Close()
	isolateAWSEnv(t, srv.URL)

	fake.putSecret("prod/db", `{"username":"app","password":"pw-1"}`)
	fake.putSecret("prod/api-key", "plain-key-1")
	fake.putSecret("prod/cert", "cert-v1")
	fake.putSecret("prod/cert", "cert-v2") // cert-v1 becomes AWSPREVIOUS
	fake.params["/app/feature"] = "on"
	fake.params["/app/token"] = "ssm-token-1"
	apiKeyARN := fake.find("prod/api-key").arn

	t.Run("IRSA env from the webhook", func(t *testing.T) {
		t.Setenv("AWS_ROLE_ARN", roleARN)
		t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", c.token(t, "app", "sts.amazonaws.com"))
		fake.resetCounts()
		dir := agenttest.MountTmpfs(t)
		touch := filepath.Join(dir, "reloaded")
		s := &spec.Spec{
			Version: spec.Version, MountPath: dir, Mode: spec.ModeSidecar, Refresh: spec.Duration(time.Minute),
			AWS: &spec.AWS{Region: region},
			Secrets: []spec.Secret{
				{Name: "db-password", File: "db/password", Mode: 0o400, Source: src("aws-sm:prod/db#password")},
				{Name: "db", File: "db/all.json", Mode: 0o400, Source: src("aws-sm:prod/db")},
				{Name: "api-key", File: "api-key", Mode: 0o400, Source: src("aws-sm:" + apiKeyARN)},
				{Name: "cert-prev", File: "cert-previous.pem", Mode: 0o444, Source: src("aws-sm:prod/cert@AWSPREVIOUS")},
				{Name: "feature", File: "feature", Mode: 0o444, Source: src("aws-ssm:/app/feature")},
				{Name: "dsn", File: "dsn", Mode: 0o400,
					Template: `postgres://{{ with secret "aws-sm:prod/db" }}{{ .username }}:{{ .password }}{{ end }}@db/app?token={{ secret "aws-ssm:/app/token" }}`,
					Sources:  []spec.Source{*src("aws-sm:prod/db"), *src("aws-ssm:/app/token")}},
			},
			OnChange: spec.OnChange{Kind: spec.OnChangeTouch, Path: touch},
		}
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
		b, err := New(t.Context(), *s.AWS, nil)
		if err != nil {
			t.Fatal(err)
		}
		w, err := agent.NewWriter(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
		notify, _ := agent.NewNotifier(s.OnChange)
		clock := &agenttest.Clock{T: time.Now()}
		a, err := agent.New(s, map[string]agent.Backend{spec.BackendAWSSM: b, spec.BackendAWSSSM: b},
			agent.Options{Writer: w, Notify: notify, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		sync := func(step string) {
			t.Helper()
			if err := a.Sync(t.Context()); err != nil {
				t.Fatalf("%s: Sync: %v (server rejections: %v)", step, err, fake.lastErrors)
			}
		}
		sync("first render")
		want := map[string]string{
			"db/password":       "pw-1",
			"db/all.json":       `{"username":"app","password":"pw-1"}`,
			"api-key":           "plain-key-1",
			"cert-previous.pem": "cert-v1",
			"feature":           "on",
			"dsn":               "postgres://app:pw-1@db/app?token=ssm-token-1",
		}
		if diff := cmp.Diff(want, agenttest.ReadFiles(dir, want)); diff != "" {
			t.Errorf("files (-want +got):\n%s", diff)
		}
		wantCalls := map[string]int{"AssumeRoleWithWebIdentity": 1, "BatchGetSecretValue": 1, "GetSecretValue": 1, "GetParameters": 1}
		if diff := cmp.Diff(wantCalls, fake.snapshot()); diff != "" {
			t.Errorf("first render: calls (-want +got):\n%s", diff)
		}
		if _, err := os.Stat(touch); err == nil {
			t.Errorf("the first render notified the app; want no notification for new files")
		}

		// Refresh with nothing changed: metadata only, no secret downloaded again, no notification.
		fake.resetCounts()
		clock.Add(2 * time.Minute)
		sync("unchanged refresh")
		if diff := cmp.Diff(map[string]int{"DescribeSecret": 3, "GetParameters": 1}, fake.snapshot()); diff != "" {
			t.Errorf("unchanged refresh: calls (-want +got):\n%s", diff)
		}
		if _, err := os.Stat(touch); err == nil {
			t.Errorf("an unchanged refresh notified the app")
		}

		// Rotation: only the changed secret is downloaded, files follow, the app is told.
		fake.putSecret("prod/db", `{"username":"app","password":"pw-2"}`)
		fake.resetCounts()
		clock.Add(2 * time.Minute)
		sync("rotation")
		if diff := cmp.Diff(map[string]int{"DescribeSecret": 3, "GetSecretValue": 1, "GetParameters": 1}, fake.snapshot()); diff != "" {
			t.Errorf("rotation: calls (-want +got):\n%s", diff)
		}
		want["db/password"] = "pw-2"
		want["db/all.json"] = `{"username":"app","password":"pw-2"}`
		want["dsn"] = "postgres://app:pw-2@db/app?token=ssm-token-1"
		if diff := cmp.Diff(want, agenttest.ReadFiles(dir, want)); diff != "" {
			t.Errorf("files after rotation (-want +got):\n%s", diff)
		}
		if _, err := os.Stat(touch); err != nil {
			t.Errorf("rotation did not notify the app: %v", err)
		}
		if got := a.Metrics().Renders("feature"); got != 1 {
			t.Errorf("feature written %v times; want 1 (it never changed)", got)
		}
		if n := fake.count("rejected"); n != 0 {
			t.Errorf("%d requests failed signature checks: %v", n, fake.lastErrors)
		}

		// Outage: the server is gone; files stay as they were.
		srv.CloseClientConnections()
		fake.mu.Lock()
		fake.creds = map[string]issued{} // every signature now fails
		fake.mu.Unlock()
		clock.Add(2 * time.Minute)
		if err := a.Sync(t.Context()); err == nil {
			t.Fatalf("Sync with every request refused succeeded")
		}
		if diff := cmp.Diff(want, agenttest.ReadFiles(dir, want)); diff != "" {
			t.Errorf("files after a failed refresh (-want +got):\n%s", diff)
		}
		if a.Metrics().FetchErrors(spec.BackendAWSSM) == 0 {
			t.Errorf("fetch errors metric not counted")
		}
	})

	t.Run("IRSA through the spec", func(t *testing.T) {
		tok := c.token(t, "app", "sts.amazonaws.com")
		b, err := New(t.Context(), spec.AWS{Region: region, RoleARN: roleARN, TokenPath: tok}, nil)
		if err != nil {
			t.Fatal(err)
		}
		res := b.Fetch(t.Context(), []spec.Source{*src("aws-ssm:/app/feature")})
		if res[0].Err != nil || string(res[0].Doc.Raw) != "on" {
			t.Fatalf("Fetch = %q, %v; want on", res[0].Doc.Raw, res[0].Err)
		}
	})

	for _, tt := range []struct {
		name, sa, aud, want string
	}{
		{"wrong audience", "app", "vault", "Incorrect token audience"},
		{"service account the role does not trust", "other", "sts.amazonaws.com", "AccessDenied"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("AWS_ROLE_ARN", roleARN)
			t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", c.token(t, tt.sa, tt.aud))
			b, err := New(t.Context(), spec.AWS{Region: region}, nil)
			if err != nil {
				t.Fatal(err)
			}
			res := b.Fetch(t.Context(), []spec.Source{*src("aws-sm:prod/db#password")})
			if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), tt.want) {
				t.Fatalf("Fetch error = %v; want one mentioning %q", res[0].Err, tt.want)
			}
		})
	}
}

// TestAWSSignatureChecked shows the server really checks signatures: the same request signed
// with a wrong secret key is refused, with the right one accepted. Needs no cluster.
func TestAWSSignatureChecked(t *testing.T) {
	fake := newFakeAWS(t, region)
	fake.staticCreds("AKIDEXAMPLE", "right-secret")
	fake.putSecret("prod/db", `{"password":"pw"}`)
	fake.putSecret("other", "x")
	fake.params["/app/feature"] = "on"
	srv := httptest.NewServer(fake)
	defer srv.Close()
	isolateAWSEnv(t, srv.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	for _, tt := range []struct {
		secret  string
		wantErr string
	}{
		{"wrong-secret", "SignatureDoesNotMatch"},
		{"right-secret", ""},
	} {
		t.Run(tt.secret, func(t *testing.T) {
			t.Setenv("AWS_SECRET_ACCESS_KEY", tt.secret)
			b, err := New(context.Background(), spec.AWS{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			res := b.Fetch(t.Context(), []spec.Source{*src("aws-sm:prod/db"), *src("aws-sm:other"), *src("aws-sm:missing"), *src("aws-ssm:/app/feature"), *src("aws-ssm:/app/missing")})
			if tt.wantErr != "" {
				for i, r := range res {
					if r.Err == nil || !strings.Contains(r.Err.Error(), tt.wantErr) {
						t.Errorf("result %d error = %v; want %s", i, r.Err, tt.wantErr)
					}
				}
				return
			}
			if res[0].Err != nil || res[0].Doc.Data["password"] != "pw" || res[1].Err != nil || string(res[1].Doc.Raw) != "x" {
				t.Errorf("Fetch = %+v; want both secrets", res[:2])
			}
			if res[2].Err == nil || !strings.Contains(res[2].Err.Error(), "ResourceNotFoundException") {
				t.Errorf("missing secret error = %v; want ResourceNotFoundException", res[2].Err)
			}
			if res[3].Err != nil || string(res[3].Doc.Raw) != "on" {
				t.Errorf("SSM parameter = %q, %v; want on", res[3].Doc.Raw, res[3].Err)
			}
			if res[4].Err == nil || !strings.Contains(res[4].Err.Error(), "no such parameter") {
				t.Errorf("missing SSM parameter error = %v; want no such parameter", res[4].Err)
			}
		})
	}
}

func (f *fakeAWS) snapshot() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.calls {
		out[k] = v
	}
	return out
}

func TestSSMEndpoint(t *testing.T) {
	tests := []struct {
		name   string
		env    map[string]string
		base   string
		region string
		want   string
	}{
		{"regional", nil, "", "eu-west-1", "https://ssm.eu-west-1.amazonaws.com"},
		{"china", nil, "", "cn-north-1", "https://ssm.cn-north-1.amazonaws.com.cn"},
		{"fips", map[string]string{"AWS_USE_FIPS_ENDPOINT": "true"}, "", "us-east-1", "https://ssm-fips.us-east-1.amazonaws.com"},
		{"base endpoint", nil, "http://127.0.0.1:4566", "us-east-1", "http://127.0.0.1:4566"},
		{"service endpoint wins", map[string]string{"AWS_ENDPOINT_URL_SSM": "https://vpce.example"}, "http://127.0.0.1:4566", "us-east-1", "https://vpce.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("AWS_ENDPOINT_URL_SSM", "")
			t.Setenv("AWS_USE_FIPS_ENDPOINT", "")
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			cfg := awssdk.Config{Region: tt.region}
			if tt.base != "" {
				cfg.BaseEndpoint = &tt.base
			}
			if got := ssmEndpoint(cfg); got != tt.want {
				t.Errorf("ssmEndpoint = %q; want %q", got, tt.want)
			}
		})
	}
}
