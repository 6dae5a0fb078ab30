// Package spec is the contract between the webhook and sidekey-agent: the JSON document the
// webhook puts in the agent containers' environment (SIDEKEY_SPEC_JSON) and the agent reads at start.
//
// It holds references only (backend, path, key, file name, mode), never a secret value, so it
// may appear in the pod spec, in logs and in the admission patch. It imports nothing from
// Kubernetes: the agent links this package and must stay small.
package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"
)

// Version is the spec format version written by the webhook; the agent refuses others.
const Version = 1

// EnvVar is the environment variable of the agent containers that carries the JSON spec.
// (Not SIDEKEY_SPEC: that is the agent's --spec FILE flag through the SIDEKEY_* env binding.)
const EnvVar = "SIDEKEY_SPEC_JSON"

// Modes of delivery.
const (
	ModeSidecar  = "sidecar"   // fetch before the app starts, then keep fresh
	ModeInitOnly = "init-only" // fetch once before the app starts, then exit
)

// Backends a Source can name.
const (
	BackendVault  = "vault"
	BackendAWSSM  = "aws-sm"
	BackendAWSSSM = "aws-ssm"
)

// Spec tells one agent what to fetch, where to write it and whom to tell.
type Spec struct {
	Version   int      `json:"version"`
	MountPath string   `json:"mountPath"` // the tmpfs the files are written into
	Mode      string   `json:"mode"`
	Refresh   Duration `json:"refresh"` // how often the sidecar re-reads its sources
	Vault     *Vault   `json:"vault,omitempty"`
	AWS       *AWS     `json:"aws,omitempty"`
	Secrets   []Secret `json:"secrets"`
	OnChange  OnChange `json:"onChange"`
	// HealthAddr is the loopback address of the agent's /healthz, /readyz and /metrics.
	HealthAddr string `json:"healthAddr,omitempty"`
}

// Vault says how to reach and log in to Vault.
type Vault struct {
	Addr      string `json:"addr"`
	Role      string `json:"role,omitempty"`     // Kubernetes auth role; empty means token auth
	AuthPath  string `json:"authPath,omitempty"` // mount of the kubernetes auth method, e.g. "auth/kubernetes"
	TokenPath string `json:"tokenPath,omitempty"`
	// CACertPath, when set, is a PEM bundle used to verify Vault's TLS certificate.
	CACertPath string `json:"caCertPath,omitempty"`
	Namespace  string `json:"namespace,omitempty"` // Vault Enterprise namespace
	// RevokeOnShutdown revokes dynamic-secret leases when the sidecar stops.
	RevokeOnShutdown bool `json:"revokeOnShutdown,omitempty"`
}

// AWS says which region and, for IRSA, which role and web-identity token to use.
type AWS struct {
	Region    string `json:"region,omitempty"`
	RoleARN   string `json:"roleArn,omitempty"`
	TokenPath string `json:"tokenPath,omitempty"` // projected web-identity token
}

// Secret is one file the agent writes.
type Secret struct {
	Name string `json:"name"` // from the annotation sidekey.io/secret.<name>
	File string `json:"file"` // relative to MountPath
	Mode Mode   `json:"mode"`
	UID  *int64 `json:"uid,omitempty"`
	GID  *int64 `json:"gid,omitempty"`
	// Source is set for a plain secret; Template for a rendered one, with Sources listing
	// every source the template reads (extracted by the webhook from its `secret` calls).
	Source   *Source  `json:"source,omitempty"`
	Template string   `json:"template,omitempty"`
	Sources  []Source `json:"sources,omitempty"`
}

// Source names one secret in one backend, e.g. vault:secret/data/app#password.
type Source struct {
	Backend string `json:"backend"`
	Path    string `json:"path"`          // Vault path, Secrets Manager name or ARN, SSM parameter name
	Key     string `json:"key,omitempty"` // one key of a JSON/KV secret; empty means all keys as JSON
	// VersionStage selects a Secrets Manager version stage (e.g. AWSPREVIOUS); default AWSCURRENT.
	VersionStage string `json:"versionStage,omitempty"`
}

// OnChange says how the app learns that a file changed.
type OnChange struct {
	Kind      string `json:"kind"`                // none, signal, http, touch
	Container string `json:"container,omitempty"` // signal: the container whose process gets it
	Signal    string `json:"signal,omitempty"`    // signal: e.g. SIGHUP
	URL       string `json:"url,omitempty"`       // http: a localhost URL that is POSTed to
	Path      string `json:"path,omitempty"`      // touch: the file whose mtime is updated
}

// On-change kinds.
const (
	OnChangeNone   = "none"
	OnChangeSignal = "signal"
	OnChangeHTTP   = "http"
	OnChangeTouch  = "touch"
)

// ErrSource is wrapped by every error of ParseSource.
var ErrSource = errors.New("invalid secret source")

// ParseSource parses "vault:<path>[#key]", "aws-sm:<name-or-arn>[#key][@STAGE]" or
// "aws-ssm:<parameter-name>". An ARN keeps its colons: only the first colon splits the backend.
func ParseSource(s string) (Source, error) {
	backend, rest, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || rest == "" {
		return Source{}, fmt.Errorf("%w %q: want <backend>:<path>[#key] with backend vault, aws-sm or aws-ssm", ErrSource, s)
	}
	src := Source{Backend: backend}
	switch backend {
	case BackendVault:
		src.Path, src.Key, _ = strings.Cut(rest, "#")
		src.Path = strings.Trim(src.Path, "/")
	case BackendAWSSM:
		rest, src.VersionStage, _ = cutLast(rest, "@")
		src.Path, src.Key, _ = strings.Cut(rest, "#")
	case BackendAWSSSM:
		if strings.Contains(rest, "#") {
			return Source{}, fmt.Errorf("%w %q: aws-ssm parameters have no keys; drop the #", ErrSource, s)
		}
		src.Path = rest
	default:
		return Source{}, fmt.Errorf("%w %q: unknown backend %q, want vault, aws-sm or aws-ssm", ErrSource, s, backend)
	}
	if src.Path == "" {
		return Source{}, fmt.Errorf("%w %q: empty path", ErrSource, s)
	}
	if strings.ContainsAny(src.Path, " \t\n") {
		return Source{}, fmt.Errorf("%w %q: path contains white space", ErrSource, s)
	}
	if backend == BackendVault && strings.Contains(src.Path, "..") {
		return Source{}, fmt.Errorf("%w %q: path contains ..", ErrSource, s)
	}
	return src, nil
}

// cutLast splits at the last sep that is followed only by an upper-case stage name.
func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 || i == len(s)-1 {
		return s, "", false
	}
	stage := s[i+1:]
	for _, r := range stage {
		if (r < 'A' || r > 'Z') && r != '_' && (r < '0' || r > '9') {
			return s, "", false
		}
	}
	return s[:i], stage, true
}

// String gives the annotation form of s; ParseSource(s.String()) == s.
func (s Source) String() string {
	out := s.Backend + ":" + s.Path
	if s.Key != "" {
		out += "#" + s.Key
	}
	if s.VersionStage != "" {
		out += "@" + s.VersionStage
	}
	return out
}

// Mode is a file mode written as an octal string ("0400") in JSON.
type Mode uint32

// ParseMode parses an octal file mode such as "0400" or "440"; only permission bits are allowed.
func ParseMode(s string) (Mode, error) {
	var m uint32
	if s == "" || len(s) > 4 {
		return 0, fmt.Errorf("file mode %q: want an octal mode such as 0400", s)
	}
	for _, r := range s {
		if r < '0' || r > '7' {
			return 0, fmt.Errorf("file mode %q: want an octal mode such as 0400", s)
		}
		m = m*8 + uint32(r-'0')
	}
	if m > 0o777 {
		return 0, fmt.Errorf("file mode %q: only permission bits (at most 0777) are allowed", s)
	}
	return Mode(m), nil
}

func (m Mode) String() string { return fmt.Sprintf("%04o", uint32(m)) }

// MarshalJSON writes the mode as an octal string.
func (m Mode) MarshalJSON() ([]byte, error) { return json.Marshal(m.String()) }

// UnmarshalJSON reads an octal string.
func (m *Mode) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("file mode: %w", err)
	}
	v, err := ParseMode(s)
	*m = v
	return err
}

// Duration is a time.Duration written as a Go duration string ("5m") in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

// CleanFile checks a relative file name inside the mount: no absolute path, no "..", no
// hidden agent files, and returns it cleaned.
func CleanFile(name string) (string, error) {
	if name == "" {
		return "", errors.New("file name is empty")
	}
	if path.IsAbs(name) {
		return "", fmt.Errorf("file name %q: must be relative to the mount path", name)
	}
	c := path.Clean(name)
	if c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("file name %q: must stay inside the mount path", name)
	}
	if strings.HasPrefix(path.Base(c), ".sidekey") {
		return "", fmt.Errorf("file name %q: names starting with .sidekey are reserved", name)
	}
	return c, nil
}

// Validate checks everything the agent relies on; the webhook calls it on what it built and
// the agent calls it on what it read.
func (s *Spec) Validate() error {
	var errs []error
	if s.Version != Version {
		errs = append(errs, fmt.Errorf("spec version %d: this agent reads version %d", s.Version, Version))
	}
	if !path.IsAbs(s.MountPath) {
		errs = append(errs, fmt.Errorf("mountPath %q: must be absolute", s.MountPath))
	}
	if s.Mode != ModeSidecar && s.Mode != ModeInitOnly {
		errs = append(errs, fmt.Errorf("mode %q: want %s or %s", s.Mode, ModeSidecar, ModeInitOnly))
	}
	if s.Mode == ModeSidecar && s.Refresh <= 0 {
		errs = append(errs, fmt.Errorf("refresh %s: must be positive", time.Duration(s.Refresh)))
	}
	if len(s.Secrets) == 0 {
		errs = append(errs, errors.New("no secrets"))
	}
	files := map[string]string{}
	for _, sec := range s.Secrets {
		if _, err := CleanFile(sec.File); err != nil {
			errs = append(errs, fmt.Errorf("secret %q: %w", sec.Name, err))
		}
		if prev, dup := files[sec.File]; dup {
			errs = append(errs, fmt.Errorf("secret %q: file %q is also written by secret %q", sec.Name, sec.File, prev))
		}
		files[sec.File] = sec.Name
		if (sec.Source == nil) == (sec.Template == "") {
			errs = append(errs, fmt.Errorf("secret %q: needs exactly one of source and template", sec.Name))
		}
		for _, src := range sec.All() {
			if src.Backend == BackendVault && s.Vault == nil {
				errs = append(errs, fmt.Errorf("secret %q: reads %s but no vault settings are given", sec.Name, src))
			}
		}
	}
	switch s.OnChange.Kind {
	case OnChangeNone, "":
	case OnChangeSignal:
		if s.OnChange.Container == "" || s.OnChange.Signal == "" {
			errs = append(errs, errors.New("onChange signal: needs container and signal"))
		}
	case OnChangeHTTP:
		if s.OnChange.URL == "" {
			errs = append(errs, errors.New("onChange http: needs url"))
		}
	case OnChangeTouch:
		if !path.IsAbs(s.OnChange.Path) {
			errs = append(errs, fmt.Errorf("onChange touch: path %q must be absolute", s.OnChange.Path))
		}
	default:
		errs = append(errs, fmt.Errorf("onChange kind %q: want none, signal, http or touch", s.OnChange.Kind))
	}
	return errors.Join(errs...)
}

// All returns every source the secret reads: its Source, or its template's Sources.
func (s Secret) All() []Source {
	if s.Source != nil {
		return []Source{*s.Source}
	}
	return s.Sources
}

// Decode parses and validates a JSON spec.
func Decode(b []byte) (*Spec, error) {
	var s Spec
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("decode spec: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("invalid spec: %w", err)
	}
	return &s, nil
}

// Load reads the spec from a file, or from the SIDEKEY_SPEC_JSON environment variable when file is "".
func Load(file string) (*Spec, error) {
	if file == "" {
		v := os.Getenv(EnvVar)
		if strings.TrimSpace(v) == "" {
			return nil, fmt.Errorf("no spec: set %s or pass --spec FILE", EnvVar)
		}
		return Decode([]byte(v))
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	return Decode(b)
}
