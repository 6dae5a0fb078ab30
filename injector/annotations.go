package injector

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sidekey/sidekey/injector/spec"
)

// Annotation keys of the grammar. Per-secret keys end in "<name>", e.g. sidekey.io/secret.db.
const (
	prefix = spec.AnnotationPrefix

	KeyInject                = spec.AnnotationInject
	KeyStatus                = spec.AnnotationStatus
	KeySharedProcessNS       = prefix + "shared-process-namespace"
	KeySecret                = prefix + "secret."
	KeyTemplate              = prefix + "template."
	KeyFile                  = prefix + "file."
	KeyFileMode              = prefix + "mode."
	KeyMountPath             = prefix + "mount-path"
	KeyContainers            = prefix + "containers"
	KeyMode                  = prefix + "mode"
	KeyRefresh               = prefix + "refresh"
	KeyOnChange              = prefix + "on-change"
	KeyInitTimeout           = prefix + "init-timeout"
	KeyVaultAddr             = prefix + "vault-addr"
	KeyVaultRole             = prefix + "vault-role"
	KeyVaultAuthPath         = prefix + "vault-auth-path"
	KeyVaultAudience         = prefix + "vault-audience"
	KeyVaultNamespace        = prefix + "vault-namespace"
	KeyVaultRevokeOnShutdown = prefix + "vault-revoke-on-shutdown"
	KeyVaultCACert           = prefix + "vault-ca-cert"
	KeyAWSRegion             = prefix + "aws-region"
	KeyAWSRoleARN            = prefix + "aws-role-arn"
	KeyAllowedReaders        = spec.AnnotationAllowedReaders
	KeyProbe                 = spec.AnnotationProbe
	KeyRunAsUser             = prefix + "run-as-user"
	KeyRunAsGroup            = prefix + "run-as-group"
	KeyAgentImage            = prefix + "agent-image"
	KeyAgentCPURequest       = prefix + "agent-cpu-request"
	KeyAgentMemoryRequest    = prefix + "agent-memory-request"
	KeyAgentCPULimit         = prefix + "agent-cpu-limit"
	KeyAgentMemoryLimit      = prefix + "agent-memory-limit"
	KeyTmpfsSize             = prefix + "tmpfs-size"
)

// ServiceAccountRoleARN is the ServiceAccount annotation of EKS IRSA that sidekey.io/aws-role-arn defaults to.
const ServiceAccountRoleARN = "eks.amazonaws.com/role-arn"

// Annotation describes one key of the grammar. The README's annotation reference is generated
// from Annotations().
type Annotation struct {
	Key         string // full key; a per-secret key ends in "<name>"
	Default     string // "" when there is none
	Description string
	// Output marks keys the webhook writes; a pod may carry them only once injected.
	Output bool
}

// annotations is the grammar: every key the injector, the agent and the probe read.
var annotations = []Annotation{
	{Key: KeyInject, Default: "false", Description: `"true" opts the pod in; "false" opts out explicitly. Nothing happens to a pod without it, but a pod that declares secrets without it is refused.`},
	{Key: KeySecret + "<name>", Description: "One file <mount-path>/<name>. Source: vault:<path> (all keys as JSON), vault:<path>#<key>, aws-sm:<name-or-arn>[#<json-key>][@<STAGE>], aws-ssm:<parameter-name>."},
	{Key: KeyTemplate + "<name>", Description: `A Go text/template rendered into <mount-path>/<name> instead; {{ secret "vault:database/creds/app" }} reads a source (a map for a whole secret, a string for one key).`},
	{Key: KeyFile + "<name>", Default: "<name>", Description: "The file's name relative to the mount path (subdirectories allowed, no ..)."},
	{Key: KeyFileMode + "<name>", Default: "0400", Description: "The file's octal mode. The owner is the target container's runAsUser and the group the pod's fsGroup (else runAsGroup)."},
	{Key: KeyMountPath, Default: DefaultMountPath, Description: "Where the tmpfs is mounted, read-only, in the target containers (replacing any mount of that path)."},
	{Key: KeyContainers, Default: "every app container", Description: "Comma list of the containers (init containers included) that get the files."},
	{Key: KeyMode, Default: "sidecar (init-only for pods of Jobs)", Description: "sidecar: fetch before the app starts, then keep fresh; init-only: fetch once before the app starts."},
	{Key: KeyRefresh, Default: "5m", Description: "How often the sidecar re-reads its sources (a Go duration, at least 1s)."},
	{Key: KeyOnChange, Default: "none", Description: "How the app learns a file changed: signal:<container>:<SIGNAL> (shares the process namespace), http://localhost:<port>/<path> (POST), touch:<path under the mount path>, or none."},
	{Key: KeyInitTimeout, Default: "2m", Description: "How long the first fetch may take before the pod fails to start."},
	{Key: KeyVaultAddr, Default: "--vault-addr", Description: "Vault's address."},
	{Key: KeyVaultRole, Description: "Vault Kubernetes auth role; required when a secret reads from vault."},
	{Key: KeyVaultAuthPath, Default: "--vault-auth-path", Description: "Mount path of Vault's Kubernetes auth method."},
	{Key: KeyVaultAudience, Default: "--vault-audience", Description: "Audience of the projected service-account token the agent logs in to Vault with."},
	{Key: KeyVaultNamespace, Description: "Vault Enterprise namespace."},
	{Key: KeyVaultCACert, Description: "A private CA for Vault's TLS certificate: secret:<name>[#<key>] or configmap:<name>[#<key>] in the pod's namespace (key default ca.crt), mounted into the agent only."},
	{Key: KeyVaultRevokeOnShutdown, Default: "false", Description: `"true" revokes dynamic-secret leases when the sidecar stops.`},
	{Key: KeyAWSRegion, Default: "the region of an ARN source", Description: "AWS region for aws-sm and aws-ssm sources."},
	{Key: KeyAWSRoleARN, Default: "the ServiceAccount's " + ServiceAccountRoleARN, Description: "IAM role assumed with a projected web-identity token (IRSA)."},
	{Key: KeyAllowedReaders, Description: "Comma list of absolute executable paths in the app containers allowed to read the files (read by the probe)."},
	{Key: KeyProbe, Default: "audit", Description: "audit reports other readers; enforce also stops them (read by the probe)."},
	{Key: KeyRunAsUser, Default: "the target container's runAsUser", Description: "User the agent runs as and owner of the files (never 0)."},
	{Key: KeyRunAsGroup, Default: "the pod's fsGroup, else the target's runAsGroup", Description: "Group of the files and the agent's group."},
	{Key: KeyAgentImage, Default: "--agent-image", Description: "The agent's image."},
	{Key: KeyAgentCPURequest, Default: "--agent-cpu-request", Description: "The agent containers' CPU request."},
	{Key: KeyAgentMemoryRequest, Default: "--agent-memory-request", Description: "The agent containers' memory request."},
	{Key: KeyAgentCPULimit, Default: "--agent-cpu-limit", Description: "The agent containers' CPU limit."},
	{Key: KeyAgentMemoryLimit, Default: "--agent-memory-limit", Description: "The agent containers' memory limit."},
	{Key: KeyTmpfsSize, Default: "--tmpfs-size-limit", Description: "Size limit of the tmpfs (counts against the pod's memory)."},
	{Key: KeyStatus, Output: true, Description: `Written by the webhook ("injected"); a second pass is a no-op.`},
	{Key: KeySharedProcessNS, Output: true, Description: `Written by the webhook ("true") when it turned on shareProcessNamespace for on-change signal.`},
}

// Annotations returns the grammar, one entry per key, in documentation order.
func Annotations() []Annotation {
	return append([]Annotation(nil), annotations...)
}

// DefaultMountPath is where the tmpfs appears in the app containers.
const DefaultMountPath = "/run/secrets/sidekey"

// Defaults of the grammar that do not depend on the webhook's flags.
const (
	defaultRefresh     = 5 * time.Minute
	defaultInitTimeout = 2 * time.Minute
	defaultFileMode    = spec.Mode(0o400)
)

// ErrAnnotation is wrapped by every error about a pod's annotations.
var ErrAnnotation = errors.New("invalid sidekey annotations")

// settings are a pod's annotations, parsed and checked on their own (without the pod spec).
type settings struct {
	inject, injectSet  bool
	status             string
	secrets            []*secretSettings // sorted by name
	mountPath          string
	containers         []string // nil: every app container
	mode               string   // "" unless set
	refresh            time.Duration
	onChange           spec.OnChange
	initTimeout        time.Duration
	vault              spec.Vault // Addr/AuthPath empty unless set
	vaultAudience      string
	vaultCA            *caSource
	awsRegion, awsRole string
	runAsUser          *int64
	runAsGroup         *int64
	agentImage         string
	resources          map[string]resource.Quantity // annotation key -> quantity
	tmpfsSize          *resource.Quantity
	declared           []string // keys that declare secrets (for the "missing inject" error)
}

type secretSettings struct {
	name     string
	source   *spec.Source
	template string
	sources  []spec.Source
	file     string
	mode     spec.Mode
	modeSet  bool
}

// problems collects what is wrong with a pod, each naming the annotation to fix.
type problems []error

func (ps *problems) add(key, format string, a ...any) {
	*ps = append(*ps, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`)

// perSecret are the prefixes of per-secret keys, longest first so "mode." is not taken for "mode".
var perSecret = []string{KeySecret, KeyTemplate, KeyFile, KeyFileMode}

// parseAnnotations parses every sidekey.io/ key of ann. Every problem is reported, each naming
// its annotation and what it expects.
func parseAnnotations(ann map[string]string) (*settings, error) {
	s := &settings{mountPath: DefaultMountPath, refresh: defaultRefresh, initTimeout: defaultInitTimeout,
		onChange: spec.OnChange{Kind: spec.OnChangeNone}}
	byName := map[string]*secretSettings{}
	secret := func(name string) *secretSettings {
		if byName[name] == nil {
			byName[name] = &secretSettings{name: name, file: name, mode: defaultFileMode}
		}
		return byName[name]
	}
	var errs problems
	bad := errs.add
	keys := make([]string, 0, len(ann))
	for k := range ann {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	onChange := ""
	for _, key := range keys {
		val := ann[key]
		if p, name, ok := cutPerSecret(key); ok {
			if !nameRE.MatchString(name) {
				bad(key, "secret name %q: want letters, digits, '.', '_' or '-'", name)
				continue
			}
			sec := secret(name)
			switch p {
			case KeySecret:
				s.declared = append(s.declared, key)
				src, err := spec.ParseSource(val)
				if err != nil {
					bad(key, "%v", err)
					continue
				}
				sec.source = &src
			case KeyTemplate:
				s.declared = append(s.declared, key)
				_, srcs, err := spec.ParseTemplate(name, val)
				if err != nil {
					bad(key, "%v", err)
					continue
				}
				sec.template, sec.sources = val, srcs
			case KeyFile:
				f, err := spec.CleanFile(val)
				if err != nil {
					bad(key, "%v", err)
					continue
				}
				sec.file = f
			case KeyFileMode:
				m, err := spec.ParseMode(val)
				if err != nil {
					bad(key, "%v", err)
					continue
				}
				sec.mode, sec.modeSet = m, true
			}
			continue
		}
		switch key {
		case KeyInject:
			switch val {
			case "true":
				s.inject, s.injectSet = true, true
			case "false":
				s.injectSet = true
			default:
				bad(key, "%q: want \"true\" or \"false\"", val)
			}
		case KeyStatus:
			if val != spec.StatusInjected {
				bad(key, "%q: written by the webhook only (value %q); remove it", val, spec.StatusInjected)
			}
			s.status = val
		case KeySharedProcessNS:
			// written by the webhook; checked against the status below
		case KeyMountPath:
			p := path.Clean(val)
			switch {
			case !path.IsAbs(val):
				bad(key, "%q: want an absolute path such as %s", val, DefaultMountPath)
			case p == "/" || isSystemPath(p):
				bad(key, "%q: choose a directory of its own such as %s", val, DefaultMountPath)
			default:
				s.mountPath = p
			}
		case KeyContainers:
			s.containers = splitList(val)
			if len(s.containers) == 0 {
				bad(key, "empty: want a comma list of container names, or remove it for every app container")
			}
		case KeyMode:
			if val != spec.ModeSidecar && val != spec.ModeInitOnly {
				bad(key, "%q: want %s or %s", val, spec.ModeSidecar, spec.ModeInitOnly)
				continue
			}
			s.mode = val
		case KeyRefresh:
			d, err := time.ParseDuration(val)
			if err != nil || d < time.Second {
				bad(key, "%q: want a duration of at least 1s such as 5m", val)
				continue
			}
			s.refresh = d
		case KeyInitTimeout:
			d, err := time.ParseDuration(val)
			if err != nil || d < time.Second || d > time.Hour {
				bad(key, "%q: want a duration between 1s and 1h such as 2m", val)
				continue
			}
			s.initTimeout = d
		case KeyOnChange:
			onChange = val // checked with the mount path below
		case KeyVaultAddr:
			u, err := url.Parse(val)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad(key, "%q: want a URL such as https://vault.vault:8200", val)
				continue
			}
			s.vault.Addr = val
		case KeyVaultRole:
			if val == "" || strings.ContainsAny(val, " /\t\n") {
				bad(key, "%q: want a Vault role name", val)
				continue
			}
			s.vault.Role = val
		case KeyVaultAuthPath:
			p := strings.Trim(val, "/")
			if p == "" || strings.Contains(p, "..") || strings.ContainsAny(p, " \t\n") {
				bad(key, "%q: want the auth method's mount such as auth/kubernetes", val)
				continue
			}
			if !strings.HasPrefix(p, "auth/") {
				p = "auth/" + p
			}
			s.vault.AuthPath = p
		case KeyVaultAudience:
			if val == "" || strings.ContainsAny(val, " \t\n") {
				bad(key, "%q: want a token audience such as vault", val)
				continue
			}
			s.vaultAudience = val
		case KeyVaultNamespace:
			s.vault.Namespace = strings.Trim(val, "/")
		case KeyVaultCACert:
			ca, err := parseCASource(val)
			if err != nil {
				bad(key, "%v", err)
				continue
			}
			s.vaultCA = ca
		case KeyVaultRevokeOnShutdown:
			b, err := strconv.ParseBool(val)
			if err != nil {
				bad(key, "%q: want \"true\" or \"false\"", val)
				continue
			}
			s.vault.RevokeOnShutdown = b
		case KeyAWSRegion:
			if !awsRegionRE.MatchString(val) {
				bad(key, "%q: want an AWS region such as eu-west-1", val)
				continue
			}
			s.awsRegion = val
		case KeyAWSRoleARN:
			if !roleARNRE.MatchString(val) {
				bad(key, "%q: want an IAM role ARN such as arn:aws:iam::123456789012:role/app", val)
				continue
			}
			s.awsRole = val
		case KeyAllowedReaders:
			rs := splitList(val)
			if len(rs) == 0 {
				bad(key, "empty: want a comma list of absolute executable paths such as /usr/bin/app")
			}
			for _, r := range rs {
				if !path.IsAbs(r) || path.Clean(r) != r {
					bad(key, "%q: want absolute, clean executable paths such as /usr/bin/app", r)
				}
			}
		case KeyProbe:
			if val != "audit" && val != "enforce" {
				bad(key, "%q: want audit or enforce", val)
			}
		case KeyRunAsUser, KeyRunAsGroup:
			id, err := strconv.ParseInt(val, 10, 64)
			if err != nil || id < 0 || id > 1<<31-1 || (key == KeyRunAsUser && id == 0) {
				bad(key, "%q: want a numeric id other than 0", val)
				continue
			}
			if key == KeyRunAsUser {
				s.runAsUser = &id
			} else {
				s.runAsGroup = &id
			}
		case KeyAgentImage:
			if val == "" || strings.ContainsAny(val, " \t\n") {
				bad(key, "%q: want an image reference", val)
				continue
			}
			s.agentImage = val
		case KeyAgentCPURequest, KeyAgentMemoryRequest, KeyAgentCPULimit, KeyAgentMemoryLimit, KeyTmpfsSize:
			q, err := resource.ParseQuantity(val)
			if err != nil || q.Sign() <= 0 {
				bad(key, "%q: want a positive quantity such as 50m or 64Mi", val)
				continue
			}
			if key == KeyTmpfsSize {
				s.tmpfsSize = &q
				continue
			}
			if s.resources == nil {
				s.resources = map[string]resource.Quantity{}
			}
			s.resources[key] = q
		default:
			msg := "unknown sidekey annotation"
			if near := nearest(key); near != "" {
				msg += "; did you mean " + near + "?"
			} else {
				msg += "; see the annotation reference"
			}
			bad(key, "%s", msg)
		}
	}
	if onChange != "" {
		oc, err := parseOnChange(onChange, s.mountPath)
		if err != nil {
			bad(KeyOnChange, "%v", err)
		} else {
			s.onChange = oc
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	files := map[string]string{}
	for _, n := range names {
		sec := byName[n]
		switch {
		case sec.source == nil && sec.template == "" && !hasKey(ann, KeySecret+n) && !hasKey(ann, KeyTemplate+n):
			bad(KeyFile+n+" / "+KeyFileMode+n, "no %s%s or %s%s declares secret %q", KeySecret, n, KeyTemplate, n, n)
			continue
		case hasKey(ann, KeySecret+n) && hasKey(ann, KeyTemplate+n):
			bad(KeySecret+n, "also declared as %s%s; keep one", KeyTemplate, n)
			continue
		}
		if prev, dup := files[sec.file]; dup {
			bad(KeyFile+n, "file %q is also written by secret %q", sec.file, prev)
		}
		files[sec.file] = n
		s.secrets = append(s.secrets, sec)
	}
	if len(errs) > 0 {
		return s, fmt.Errorf("%w: %w", ErrAnnotation, errors.Join(errs...))
	}
	return s, nil
}

// caSource is a CA bundle in a Secret or ConfigMap of the pod's namespace.
type caSource struct {
	kind, name, key string // kind "secret" or "configmap"
}

var objectNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

func parseCASource(v string) (*caSource, error) {
	kind, rest, _ := strings.Cut(v, ":")
	name, key, _ := strings.Cut(rest, "#")
	if key == "" {
		key = "ca.crt"
	}
	if (kind != "secret" && kind != "configmap") || !objectNameRE.MatchString(name) || len(name) > 253 || !nameRE.MatchString(key) {
		return nil, fmt.Errorf("%q: want secret:<name>[#<key>] or configmap:<name>[#<key>]", v)
	}
	return &caSource{kind: kind, name: name, key: key}, nil
}

var (
	awsRegionRE = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	roleARNRE   = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$`)
)

func cutPerSecret(key string) (p, name string, ok bool) {
	for _, p := range perSecret {
		if strings.HasPrefix(key, p) {
			return p, key[len(p):], true
		}
	}
	return "", "", false
}

func isLoopbackIP(h string) bool {
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// isSystemPath reports directories a tmpfs must not hide.
func isSystemPath(p string) bool {
	switch p {
	case "/bin", "/sbin", "/usr", "/lib", "/lib64", "/etc", "/dev", "/proc", "/sys", "/var", "/run", "/tmp", "/home", "/root":
		return true
	}
	return false
}

var signals = map[string]bool{
	"SIGHUP": true, "SIGINT": true, "SIGQUIT": true, "SIGTERM": true, "SIGUSR1": true, "SIGUSR2": true, "SIGWINCH": true,
}

// parseOnChange parses signal:<container>:<SIG>, http://localhost:<port>/<path>, touch:<path> or none.
func parseOnChange(v, mountPath string) (spec.OnChange, error) {
	const want = "want signal:<container>:<SIGNAL>, http://localhost:<port>/<path>, touch:<path> or none"
	switch {
	case v == spec.OnChangeNone:
		return spec.OnChange{Kind: spec.OnChangeNone}, nil
	case strings.HasPrefix(v, "signal:"):
		c, sig, ok := strings.Cut(strings.TrimPrefix(v, "signal:"), ":")
		if !ok || c == "" || sig == "" {
			return spec.OnChange{}, fmt.Errorf("%q: %s", v, want)
		}
		sig = strings.ToUpper(sig)
		if !strings.HasPrefix(sig, "SIG") {
			sig = "SIG" + sig
		}
		if !signals[sig] {
			return spec.OnChange{}, fmt.Errorf("%q: signal %s: want one of SIGHUP, SIGUSR1, SIGUSR2, SIGINT, SIGQUIT, SIGTERM, SIGWINCH", v, sig)
		}
		return spec.OnChange{Kind: spec.OnChangeSignal, Container: c, Signal: sig}, nil
	case strings.HasPrefix(v, "http://"), strings.HasPrefix(v, "https://"):
		u, err := url.Parse(v)
		if err != nil || u.Scheme != "http" || u.Port() == "" || u.User != nil {
			return spec.OnChange{}, fmt.Errorf("%q: want http://localhost:<port>/<path>", v)
		}
		if h := u.Hostname(); h != "localhost" && !isLoopbackIP(h) {
			return spec.OnChange{}, fmt.Errorf("%q: the agent only calls the pod itself; use localhost or 127.0.0.1", v)
		}
		if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
			return spec.OnChange{}, fmt.Errorf("%q: port %q: want 1-65535", v, u.Port())
		}
		return spec.OnChange{Kind: spec.OnChangeHTTP, URL: v}, nil
	case strings.HasPrefix(v, "touch:"):
		p := strings.TrimPrefix(v, "touch:")
		if !path.IsAbs(p) {
			return spec.OnChange{}, fmt.Errorf("%q: want an absolute path under %s", v, mountPath)
		}
		p = path.Clean(p)
		rel := strings.TrimPrefix(p, mountPath+"/")
		if rel == p {
			return spec.OnChange{}, fmt.Errorf("%q: the agent can only write under the mount path %s", v, mountPath)
		}
		if _, err := spec.CleanFile(rel); err != nil {
			return spec.OnChange{}, fmt.Errorf("%q: %w", v, err)
		}
		return spec.OnChange{Kind: spec.OnChangeTouch, Path: p}, nil
	}
	return spec.OnChange{}, fmt.Errorf("%q: %s", v, want)
}

// nearest suggests the known key closest to an unknown one, or "" when none is close.
func nearest(key string) string {
	best, bestD := "", 4
	for _, a := range annotations {
		k := a.Key
		probe := key
		if base, ok := strings.CutSuffix(k, "<name>"); ok {
			// compare only the part before the secret name: "sidekey.io/secrte.db" ~ "sidekey.io/secret."
			if i := strings.IndexByte(key[len(prefix):], '.'); i >= 0 {
				probe = key[:len(prefix)+i+1]
				k = base
			} else {
				continue
			}
		}
		if d := editDistance(probe, k); d < bestD {
			best, bestD = a.Key, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// AnnotationReference renders the grammar as a Markdown table (the README's annotation reference).
func AnnotationReference() string {
	var b strings.Builder
	b.WriteString("| Annotation | Default | Meaning |\n|---|---|---|\n")
	esc := strings.NewReplacer("|", `\|`, "\n", " ", "<", "&lt;", ">", "&gt;")
	cell := func(s string) string { return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s) }
	for _, a := range annotations {
		def := esc.Replace(a.Default)
		switch {
		case a.Output:
			def = "(set by the webhook)"
		case def == "":
			def = "—"
		case !strings.Contains(def, " "):
			def = "`" + cell(a.Default) + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", cell(a.Key), def, esc.Replace(a.Description))
	}
	return b.String()
}
