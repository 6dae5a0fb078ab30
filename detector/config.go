package detector

import (
	"regexp"
	"slices"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sidekey/sidekey/detector/credfile"
	"github.com/sidekey/sidekey/detector/match"
	"github.com/sidekey/sidekey/detector/report"
)

// Config sections, used as the finding's path.
const (
	sectionEnv     = "Env"
	sectionLabels  = "Labels"
	sectionHistory = "History"
)

// secretName matches variable names that promise a secret value.
var secretName = regexp.MustCompile(`(?i)(?:^|[_.-])(?:pass(?:word|wd)?|pwd|secret|token|api[_.-]?key|access[_.-]?key|private[_.-]?key|credentials?|auth)(?:$|[_.-])`)

// configRule is the rule for a config value whose name promises a secret and whose value is
// not a placeholder.
const configRule = "sidekey-config-secret-value"

// scanConfig scans the config's Env values, Labels values and history created_by lines
// (where `RUN |N KEY=VALUE ...` carries build arguments). It also returns the secrets found
// in the history, for RedactHistory: layer findings show their layer's created_by.
func (d *Detector) scanConfig(cf *v1.ConfigFile) ([]report.Finding, []string) {
	sc := d.engine.NewScanner()
	var out []report.Finding
	var historySecrets []string
	for i, kv := range cf.Config.Env {
		k, v, _ := strings.Cut(kv, "=")
		out = append(out, d.configValue(sc, sectionEnv, k, v, i+1)...)
	}
	for _, k := range sortedKeys(cf.Config.Labels) {
		out = append(out, d.configValue(sc, sectionLabels, k, cf.Config.Labels[k], 0)...)
	}
	for i, h := range cf.History {
		args, rest := BuildArgs(h.CreatedBy)
		for _, kv := range args {
			for _, hit := range KeyValueHits(sc, sectionHistory, kv[0], kv[1]) {
				historySecrets = append(historySecrets, hit.Secret)
				out = append(out, configFinding(sectionHistory, kv[0], i+1, hit))
			}
		}
		for _, hit := range sc.Scan(sectionHistory, []byte(rest), 1) {
			historySecrets = append(historySecrets, hit.Secret)
			out = append(out, configFinding(sectionHistory, "", i+1, hit))
		}
	}
	return out, historySecrets
}

// RedactHistory makes a history created_by safe to show: every build-argument value
// (`RUN |N KEY=VALUE ...`) and every secret in secrets is replaced by its redacted form.
func RedactHistory(createdBy string, secrets []string) string {
	args, _ := BuildArgs(createdBy)
	for _, kv := range args {
		if kv[1] != "" {
			createdBy = strings.ReplaceAll(createdBy, kv[0]+"="+kv[1], kv[0]+"="+report.Redact(kv[1]))
		}
	}
	for _, s := range secrets {
		if s != "" {
			createdBy = strings.ReplaceAll(createdBy, s, report.Redact(s))
		}
	}
	return createdBy
}

// configValue scans one KEY=VALUE from the config.
func (d *Detector) configValue(sc *match.Scanner, section, key, value string, line int) []report.Finding {
	var out []report.Finding
	for _, hit := range KeyValueHits(sc, section, key, value) {
		out = append(out, configFinding(section, key, line, hit))
	}
	return out
}

// SecretName reports whether a variable name promises a secret (PASSWORD, API_KEY, ...).
func SecretName(key string) bool { return secretName.MatchString(key) }

// KeyValueHits scans a KEY=VALUE setting (an Env entry, a label, a build argument, a
// Dockerfile ENV): the rules run on "KEY=VALUE", and a secret-named key whose value is a
// plausible literal secret, not a placeholder, is a hit of rule sidekey-config-secret-value.
func KeyValueHits(sc *match.Scanner, section, key, value string) []match.Hit {
	hits := slices.Clone(sc.Scan(section, []byte(key+"="+value), 1))
	for _, h := range hits {
		if h.Secret == value {
			return hits
		}
	}
	if SecretName(key) && !credfile.Placeholder(value) && plausibleSecret(value) {
		hits = append(hits, match.Hit{
			RuleID:      configRule,
			Description: "secret-named variable with a literal value",
			Secret:      value,
			Entropy:     float32(match.ShannonEntropy(value)),
		})
	}
	return hits
}

// plausibleSecret rejects values that are clearly settings, not secrets: short values,
// numbers, paths and URLs without credentials, booleans.
func plausibleSecret(v string) bool {
	if len(v) < 8 || strings.ContainsAny(v, " \t") {
		return false
	}
	if _, err := strconv.ParseFloat(v, 64); err == nil {
		return false
	}
	if strings.HasPrefix(v, "/") || (strings.Contains(v, "://") && !strings.Contains(v, "@")) {
		return false
	}
	return match.ShannonEntropy(v) >= 3.0
}

func configFinding(section, key string, line int, h match.Hit) report.Finding {
	return report.Finding{
		Rule:        h.RuleID,
		Description: h.Description,
		Source:      report.SourceConfig,
		Path:        section,
		Key:         key,
		Status:      report.Metadata,
		Line:        line,
		Secret:      report.Redact(h.Secret),
		Entropy:     h.Entropy,
		Fingerprint: report.Fingerprint(h.RuleID, "config", section+"/"+key, h.Secret),
	}
}

// BuildArgs splits a history created_by of the form `|N K1=V1 ... KN=VN rest` (how BuildKit
// and the classic builder record build arguments used by a RUN) into the N pairs and the
// rest. Without that prefix it returns no pairs and the whole string.
func BuildArgs(createdBy string) (args [][2]string, rest string) {
	s := strings.TrimSpace(createdBy)
	s = strings.TrimPrefix(s, "RUN ")
	if !strings.HasPrefix(s, "|") {
		return nil, createdBy
	}
	numEnd := strings.IndexAny(s, " \t")
	if numEnd < 0 {
		return nil, createdBy
	}
	n, err := strconv.Atoi(s[1:numEnd])
	if err != nil || n <= 0 {
		return nil, createdBy
	}
	s = strings.TrimLeft(s[numEnd:], " \t")
	for range n {
		kv, tail, _ := strings.Cut(s, " ")
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			break
		}
		// Quoted values (KEY="a b") may hold spaces.
		if strings.HasPrefix(v, `"`) && !strings.HasSuffix(v, `"`) {
			if end := strings.Index(tail, `"`); end >= 0 {
				v += " " + tail[:end+1]
				tail = tail[end+1:]
			}
		}
		args = append(args, [2]string{k, strings.Trim(v, `"'`)})
		s = strings.TrimLeft(tail, " ")
	}
	return args, s
}
