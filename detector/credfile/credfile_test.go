package credfile_test

import (
	"encoding/base64"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sidekey/sidekey/detector/credfile"
)

type hit struct {
	Rule, Secret string
}

func scan(path, body string) []hit {
	var out []hit
	for _, r := range credfile.All() {
		if !r.Applies(path) {
			continue
		}
		for _, h := range r.Scan(path, []byte(body)) {
			if body[h.Start:h.End] == "" {
				out = append(out, hit{"bad span " + h.RuleID, h.Secret})
			}
			out = append(out, hit{h.RuleID, h.Secret})
		}
	}
	return out
}

func TestRules(t *testing.T) {
	pw := "s3cr3T-" + "pa55w0rd-x9"
	auth := base64.StdEncoding.EncodeToString([]byte("ci:" + pw))
	tests := []struct {
		name, path, body string
		want             []hit
	}{
		{"npmrc token", "/root/.npmrc", "registry=https://r.example.com/\n//r.example.com/:_authToken=" + pw + "\n", []hit{{"sidekey-npmrc-auth", pw}}},
		{"npmrc placeholder", "/root/.npmrc", "//r.example.com/:_authToken=${NPM_TOKEN}\n", nil},
		{"pypirc", "/home/u/.pypirc", "[pypi]\nusername = __token__\npassword = " + pw + "\n", []hit{{"sidekey-pypirc-password", pw}}},
		{"netrc", "/root/.netrc", "machine api.example.com login bot password " + pw + "\n", []hit{{"sidekey-netrc-password", pw}}},
		{"git-credentials", "/root/.git-credentials", "https://bot:" + pw + "@github.com\n", []hit{{"sidekey-git-credentials", pw}}},
		{"pgpass", "/root/.pgpass", "# comment\ndb.example.com:5432:*:app:" + pw + "\nlocalhost:5432:*:x:*\n", []hit{{"sidekey-pgpass", pw}}},
		{"pgpass escaped colon", "/root/.pgpass", `h:5432:db:u\:x:` + pw + "\n", []hit{{"sidekey-pgpass", pw}}},
		{"aws credentials", "/root/.aws/credentials", "[default]\naws_access_key_id = " + "AKIA" + "Q3EGRVPOLKJH7XYZ\naws_secret_access_key = " + pw + "\n", []hit{{"sidekey-aws-credentials", pw}}},
		{"docker config", "/root/.docker/config.json", `{"auths":{"r.example.com":{"auth":"` + auth + `"}}}`, []hit{{"sidekey-docker-config-auth", pw}}},
		{"docker config creds store only", "/root/.docker/config.json", `{"auths":{"r.example.com":{}},"credsStore":"desktop"}`, nil},
		{"kubeconfig token", "/root/.kube/config", "apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: u\n  user:\n    token: " + pw + "\n", []hit{{"sidekey-kubeconfig-credential", pw}}},
		{"kubeconfig exec plugin", "/root/.kube/config", "apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: u\n  user:\n    exec:\n      command: aws\n", nil},
		{"not a kubeconfig", "/app/values.yaml", "users:\n  token: abc\n", nil},
		{"encrypted pem", "/app/tls.key", "-----BEGIN ENCRYPTED " + "PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIZ\n-----END ENCRYPTED PRIVATE KEY-----\n", nil},
		{"legacy encrypted pem", "/app/tls.key", "-----BEGIN RSA " + "PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,ABC\n\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIZ\n-----END RSA PRIVATE KEY-----\n", nil},
		{"plain pem", "/app/tls.key", "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIZ\n-----END RSA PRIVATE KEY-----\n", []hit{{"sidekey-private-key-file", "MIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIZ"}}},
		{"nested path", "/app/lib.jar!conf/.npmrc", "//r/:_authToken=" + pw + "\n", []hit{{"sidekey-npmrc-auth", pw}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, scan(tt.path, tt.body)); diff != "" {
				t.Errorf("hits (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlaceholder(t *testing.T) {
	for v, want := range map[string]bool{
		"${TOKEN}": true, "$TOKEN": true, "{{ .Values.pw }}": true, "<password>": true, "changeme": true,
		"xxxxxxxx": true, "": true, "abc": true, "your_token_here": true, "%PASSWORD%": true,
		"p7Gq2Lx9Vw4Rz8Tk": false, "hunter2-is-real-9": false,
	} {
		if got := credfile.Placeholder(v); got != want {
			t.Errorf("Placeholder(%q) = %v; want %v", v, got, want)
		}
	}
}

// FuzzRules runs every credential-file rule on arbitrary content: hits must lie inside it.
func FuzzRules(f *testing.F) {
	f.Add("/root/.pgpass", "h:1:d:u:p\\:w\n")
	f.Add("/root/.docker/config.json", `{"auths":{"x":{"auth":"YTpi"}}}`)
	f.Add("/root/.kube/config", "clusters: []\nusers:\n- user:\n    token: abcdefgh\n")
	f.Add("/root/.ssh/id_rsa", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n")
	f.Fuzz(func(t *testing.T, path, body string) {
		for _, r := range credfile.All() {
			if !r.Applies(path) {
				continue
			}
			for _, h := range r.Scan(path, []byte(body)) {
				if h.Start < 0 || h.End > len(body) || h.Start > h.End {
					t.Fatalf("%s: span [%d,%d) outside %d bytes", h.RuleID, h.Start, h.End, len(body))
				}
			}
		}
	})
}
