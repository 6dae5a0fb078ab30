// Package credfile holds sidekey's own rules for credential files that regex scanners cover
// poorly: they understand the file's format instead of matching one pattern. Each rule is a
// match.FileRule; All returns them.
package credfile

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"path"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/sidekey/sidekey/detector/match"
)

// All returns every credential-file rule.
func All() []match.FileRule {
	return []match.FileRule{
		lineRule{id: "sidekey-npmrc-auth", desc: "npm registry auth token in .npmrc",
			applies: base(".npmrc"), re: regexp.MustCompile(`(?m)^[ \t]*(?:[^\s=#;]*:)?(?:_authToken|_auth|_password)[ \t]*=[ \t]*"?([^\s"#;]+)`)},
		lineRule{id: "sidekey-pypirc-password", desc: "package index password in .pypirc",
			applies: base(".pypirc"), re: regexp.MustCompile(`(?m)^[ \t]*password[ \t]*[=:][ \t]*(\S[^\r\n]*?)[ \t]*$`)},
		lineRule{id: "sidekey-netrc-password", desc: "password in .netrc",
			applies: base(".netrc", "_netrc"), re: regexp.MustCompile(`(?:^|\s)(?:password|passwd)\s+(\S+)`)},
		lineRule{id: "sidekey-git-credentials", desc: "password or token in .git-credentials",
			applies: base(".git-credentials"), re: regexp.MustCompile(`(?m)^[ \t]*[a-z][a-z0-9+.-]*://[^:/@\s]*:([^@\s]+)@`)},
		lineRule{id: "sidekey-aws-credentials", desc: "AWS secret key or session token in an AWS credentials file",
			applies: suffix(".aws/credentials", ".aws/config"), re: regexp.MustCompile(`(?mi)^[ \t]*(?:aws_secret_access_key|aws_session_token)[ \t]*=[ \t]*(\S+)`)},
		pgpass{},
		dockerConfig{},
		kubeconfig{},
		privateKey{},
	}
}

// Placeholder reports whether v is an obvious stand-in rather than a real credential:
// empty, a variable reference (${VAR}, $VAR, %VAR%, {{ .x }}, <token>), a run of one
// character, or a documentation word (example, changeme, placeholder, ...).
func Placeholder(v string) bool {
	v = strings.Trim(strings.TrimSpace(v), `"'`)
	if len(v) < 4 {
		return true
	}
	switch {
	case strings.HasPrefix(v, "$"), strings.HasPrefix(v, "{{"), strings.HasPrefix(v, "<") && strings.HasSuffix(v, ">"),
		strings.HasPrefix(v, "%") && strings.HasSuffix(v, "%"), strings.HasPrefix(v, "@") && strings.HasSuffix(v, "@"):
		return true
	}
	if strings.Trim(v, v[:1]) == "" {
		return true
	}
	l := strings.ToLower(v)
	for _, w := range []string{"example", "changeme", "change_me", "change-me", "placeholder", "your_", "your-", "yourpassword",
		"xxxx", "****", "dummy", "redacted", "replace", "secret_here", "password_here", "todo", "fixme", "sample"} {
		if strings.Contains(l, w) {
			return true
		}
	}
	switch l {
	case "null", "none", "true", "false", "password", "secret", "token", "undefined", "empty":
		return true
	}
	return false
}

type rule struct {
	id, desc string
}

func (r rule) ID() string { return r.id }

func (r rule) hit(start, end int, secret string) match.Hit {
	return match.Hit{RuleID: r.id, Description: r.desc, Start: start, End: end, Secret: secret,
		Entropy: float32(match.ShannonEntropy(secret))}
}

// found appends a hit for secret, located at the first occurrence of raw in data, unless the
// secret is empty or a placeholder.
func (r rule) found(hits []match.Hit, data []byte, raw, secret string) []match.Hit {
	if secret == "" || Placeholder(secret) {
		return hits
	}
	start := max(0, bytes.Index(data, []byte(raw)))
	return append(hits, r.hit(start, start+len(raw), secret))
}

func base(names ...string) func(string) bool {
	return func(p string) bool {
		b := path.Base(inner(p))
		for _, n := range names {
			if b == n {
				return true
			}
		}
		return false
	}
}

func suffix(sfx ...string) func(string) bool {
	return func(p string) bool {
		p = inner(p)
		for _, s := range sfx {
			if strings.HasSuffix(p, "/"+s) || p == s {
				return true
			}
		}
		return false
	}
}

// inner is the innermost path of a nested path OUTER!INNER.
func inner(p string) string {
	if i := strings.LastIndexByte(p, '!'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// lineRule reports the first capture group of re wherever it is not a placeholder.
type lineRule struct {
	id, desc string
	applies  func(string) bool
	re       *regexp.Regexp
}

func (r lineRule) ID() string            { return r.id }
func (r lineRule) Applies(p string) bool { return r.applies(p) }
func (r lineRule) Scan(_ string, data []byte) []match.Hit {
	var hits []match.Hit
	for _, m := range r.re.FindAllSubmatchIndex(data, -1) {
		secret := string(data[m[2]:m[3]])
		if Placeholder(secret) {
			continue
		}
		hits = append(hits, rule{r.id, r.desc}.hit(m[2], m[3], secret))
	}
	return hits
}

// pgpass: hostname:port:database:username:password, ':' and '\' escaped with '\'.
type pgpass struct{}

func (pgpass) ID() string            { return "sidekey-pgpass" }
func (pgpass) Applies(p string) bool { return base(".pgpass")(p) }
func (pgpass) Scan(_ string, data []byte) []match.Hit {
	r := rule{"sidekey-pgpass", "PostgreSQL password in .pgpass"}
	var hits []match.Hit
	off := 0
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		start := off
		off += len(line)
		line = bytes.TrimRight(line, "\r\n")
		if len(bytes.TrimSpace(line)) == 0 || bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			continue
		}
		field, fstart := 0, 0
		for i := 0; i < len(line); i++ {
			switch line[i] {
			case '\\':
				i++
			case ':':
				field++
				fstart = i + 1
			}
			if field == 4 {
				break
			}
		}
		if field != 4 {
			continue
		}
		pw := string(line[fstart:])
		if pw == "" || pw == "*" || Placeholder(pw) {
			continue
		}
		hits = append(hits, r.hit(start+fstart, start+len(line), pw))
	}
	return hits
}

// dockerConfig: .docker/config.json (and containers' auth.json): auths.*.auth is
// base64("user:password"); identitytoken and registrytoken are bearer credentials.
type dockerConfig struct{}

func (dockerConfig) ID() string { return "sidekey-docker-config-auth" }
func (dockerConfig) Applies(p string) bool {
	return suffix(".docker/config.json", "containers/auth.json", ".dockercfg")(p)
}
func (dockerConfig) Scan(_ string, data []byte) []match.Hit {
	r := rule{"sidekey-docker-config-auth", "registry credentials in a Docker config.json"}
	var cfg struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
			RegistryToken string `json:"registrytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		// .dockercfg is the bare auths map.
		if err := json.Unmarshal(data, &cfg.Auths); err != nil {
			return nil
		}
	}
	var hits []match.Hit
	add := func(raw, secret string) { hits = r.found(hits, data, raw, secret) }
	for _, a := range cfg.Auths {
		if a.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				dec, err = base64.RawStdEncoding.DecodeString(a.Auth)
			}
			if err == nil {
				if _, pw, ok := strings.Cut(string(dec), ":"); ok {
					add(a.Auth, pw)
				}
			}
		}
		add(a.Password, a.Password)
		add(a.IdentityToken, a.IdentityToken)
		add(a.RegistryToken, a.RegistryToken)
	}
	return hits
}

// kubeconfig: users[].user.token, password, client-key-data (a base64 PEM private key).
type kubeconfig struct{}

func (kubeconfig) ID() string { return "sidekey-kubeconfig-credential" }
func (kubeconfig) Applies(p string) bool {
	p = inner(p)
	b := path.Base(p)
	return strings.Contains(p, ".kube/") || strings.Contains(strings.ToLower(b), "kubeconfig") ||
		(strings.Contains(p, "kubernetes/") && strings.HasSuffix(b, ".conf")) ||
		strings.HasSuffix(b, ".yaml") || strings.HasSuffix(b, ".yml")
}
func (kubeconfig) Scan(_ string, data []byte) []match.Hit {
	if !bytes.Contains(data, []byte("users:")) || !bytes.Contains(data, []byte("clusters:")) {
		return nil
	}
	r := rule{"sidekey-kubeconfig-credential", "credential in a kubeconfig"}
	var cfg struct {
		Users []struct {
			User struct {
				Token         string `json:"token"`
				Password      string `json:"password"`
				ClientKeyData string `json:"client-key-data"`
			} `json:"user"`
		} `json:"users"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return nil
	}
	var hits []match.Hit
	add := func(raw, secret string) { hits = r.found(hits, data, raw, secret) }
	for _, u := range cfg.Users {
		add(u.User.Token, u.User.Token)
		add(u.User.Password, u.User.Password)
		if u.User.ClientKeyData != "" {
			if pem, err := base64.StdEncoding.DecodeString(u.User.ClientKeyData); err == nil && bytes.Contains(pem, []byte("PRIVATE KEY")) {
				add(u.User.ClientKeyData, u.User.ClientKeyData)
			}
		}
	}
	return hits
}

// privateKey: an unencrypted PEM or OpenSSH private key in a key file (id_rsa, *.pem, *.key).
type privateKey struct{}

var pemBlock = regexp.MustCompile(`-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----\r?\n((?:[A-Za-z0-9-]+: [^\n]*\r?\n)*)\r?\n?([A-Za-z0-9+/=\r\n]+?)-----END [A-Z0-9 ]*PRIVATE KEY-----`)

func (privateKey) ID() string { return "sidekey-private-key-file" }
func (privateKey) Applies(p string) bool {
	b := path.Base(inner(p))
	switch b {
	case "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk":
		return true
	}
	switch path.Ext(b) {
	case ".pem", ".key", ".p8":
		return true
	}
	return false
}
func (privateKey) Scan(_ string, data []byte) []match.Hit {
	r := rule{"sidekey-private-key-file", "unencrypted private key file"}
	var hits []match.Hit
	for _, m := range pemBlock.FindAllSubmatchIndex(data, -1) {
		kind := string(data[m[2]:m[3]])
		headers := string(data[m[4]:m[5]])
		body := data[m[6]:m[7]]
		if strings.Contains(kind, "ENCRYPTED") || strings.Contains(headers, "ENCRYPTED") {
			continue
		}
		if kind == "OPENSSH " && opensshEncrypted(body) {
			continue
		}
		hits = append(hits, r.hit(m[0], m[1], string(bytes.TrimSpace(body))))
	}
	return hits
}

// opensshEncrypted reads the cipher name of an openssh-key-v1 blob; "none" is unencrypted.
func opensshEncrypted(body []byte) bool {
	raw, err := base64.StdEncoding.DecodeString(strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, string(body)))
	const magic = "openssh-key-v1\x00"
	if err != nil || !bytes.HasPrefix(raw, []byte(magic)) || len(raw) < len(magic)+4 {
		return false
	}
	rest := raw[len(magic):]
	n := binary.BigEndian.Uint32(rest)
	if uint64(len(rest)) < 4+uint64(n) {
		return false
	}
	return string(rest[4:4+n]) != "none"
}
