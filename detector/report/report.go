// Package report is the detector's output: the findings of one scan, their fingerprints,
// ignore files and baselines, and the text, JSON and SARIF 2.1.0 renderings. Secrets are
// redacted when a Finding is made; no rendering ever sees one.
package report

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Source says where a finding was found.
const (
	SourceLayer      = "layer"
	SourceConfig     = "config"
	SourceFile       = "file"
	SourceDockerfile = "dockerfile"
)

// Status says whether a secret is still in the final image.
type Status string

// Statuses.
const (
	// Present: the file is in the final filesystem.
	Present Status = "present"
	// Deleted: a later layer removed the file (whiteout, opaque directory, or a parent replaced).
	Deleted Status = "deleted"
	// Overwritten: a later layer replaced the file; the secret is still in its layer.
	Overwritten Status = "overwritten"
	// Metadata: the secret is in the image config (Env, Labels, history).
	Metadata Status = "metadata"
)

// AllStatuses lists every status, in the order --fail-on documents them.
var AllStatuses = []Status{Present, Deleted, Overwritten, Metadata}

// ParseStatus checks a --fail-on element.
func ParseStatus(s string) (Status, error) {
	st := Status(strings.TrimSpace(s))
	if slices.Contains(AllStatuses, st) {
		return st, nil
	}
	return "", fmt.Errorf("unknown status %q (want present, deleted, overwritten or metadata)", s)
}

// Finding is one secret.
type Finding struct {
	Rule        string `json:"rule"`
	Description string `json:"description"`
	Source      string `json:"source"`
	// Path is the file ("/app/.env", nested "/app/lib.jar!config/app.properties") or, for
	// the config, "Env", "Labels" or "History".
	Path   string `json:"path"`
	Status Status `json:"status"`
	// LayerIndex, LayerDigest, LayerDiffID and CreatedBy locate a layer finding.
	LayerIndex  *int   `json:"layer_index,omitempty"`
	LayerDigest string `json:"layer_digest,omitempty"`
	LayerDiffID string `json:"layer_diff_id,omitempty"`
	CreatedBy   string `json:"created_by,omitempty"`
	// Key names the config entry (the variable or label name) of a config finding.
	Key  string `json:"key,omitempty"`
	Line int    `json:"line"`
	// Secret is redacted: at most a short prefix of the real value.
	Secret      string  `json:"secret"`
	Entropy     float32 `json:"entropy,omitempty"`
	Fingerprint string  `json:"fingerprint"`
}

// Stats describes the work a scan did.
type Stats struct {
	Layers     int   `json:"layers"`
	Files      int64 `json:"files"`
	Bytes      int64 `json:"bytes"`
	DurationMS int64 `json:"duration_ms"`
	// Skipped counts files not scanned: binaries, allowlisted paths.
	Skipped int64 `json:"skipped"`
	// Archives counts nested archives opened.
	Archives int64 `json:"archives"`
	Ignored  int   `json:"ignored"`
	Baseline int   `json:"baseline"`
}

// Problem is something the scan could not do. Incomplete problems make the scan incomplete
// (exit code 2).
type Problem struct {
	Layer      *int   `json:"layer_index,omitempty"`
	Digest     string `json:"layer_digest,omitempty"`
	Path       string `json:"path,omitempty"`
	Message    string `json:"message"`
	Incomplete bool   `json:"incomplete"`
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Layer != nil {
		fmt.Fprintf(&b, "layer %d", *p.Layer)
		if p.Digest != "" {
			fmt.Fprintf(&b, " (%s)", short(p.Digest))
		}
		b.WriteString(": ")
	}
	if p.Path != "" {
		b.WriteString(p.Path + ": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Report is the result of one scan.
type Report struct {
	Image    string    `json:"image"`
	Findings []Finding `json:"findings"`
	Problems []Problem `json:"problems,omitempty"`
	Stats    Stats     `json:"stats"`
}

// Incomplete reports whether some part of the input was not scanned.
func (r *Report) Incomplete() bool {
	for _, p := range r.Problems {
		if p.Incomplete {
			return true
		}
	}
	return false
}

// Failing returns the findings whose status is in failOn (all statuses when failOn is empty).
func (r *Report) Failing(failOn []Status) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if len(failOn) == 0 || slices.Contains(failOn, f.Status) {
			out = append(out, f)
		}
	}
	return out
}

// Redact keeps at most a 4-character prefix of a secret, and none of a short one.
func Redact(secret string) string {
	if secret == "" {
		return ""
	}
	if len(secret) >= 16 {
		return secret[:4] + "…REDACTED"
	}
	return "REDACTED"
}

// Fingerprint identifies a finding without line numbers, so it survives unrelated edits:
// rule, the layer's diffID ("config" for the image config, "" for files), path and the
// SHA-256 of the secret (first 16 hex digits).
func Fingerprint(rule, diffID, path, secret string) string {
	sum := sha256.Sum256([]byte(secret))
	if diffID == "" {
		diffID = "-"
	}
	return rule + ":" + diffID + ":" + path + ":" + hex.EncodeToString(sum[:8])
}

// Ignore is a set of fingerprints to drop.
type Ignore map[string]bool

// ReadIgnoreFile reads a .sidekeyignore: one fingerprint per line, '#' comments, blank lines.
// A missing file is an empty set.
func ReadIgnoreFile(path string) (Ignore, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return Ignore{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ignore file %s: %w", path, err)
	}
	defer f.Close()
	return parseIgnore(f)
}

func parseIgnore(r io.Reader) (Ignore, error) {
	ig := Ignore{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		ig[line] = true
	}
	return ig, sc.Err()
}

// ReadBaseline reads a previous JSON report; its fingerprints are known findings.
func ReadBaseline(path string) (Ignore, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read baseline %s: %w", path, err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("baseline %s is not a sidekey JSON report: %w", path, err)
	}
	ig := Ignore{}
	for _, f := range r.Findings {
		ig[f.Fingerprint] = true
	}
	return ig, nil
}

// Drop removes findings whose fingerprint is in ignore or baseline and counts them.
func (r *Report) Drop(ignore, baseline Ignore) {
	out := r.Findings[:0]
	for _, f := range r.Findings {
		switch {
		case ignore[f.Fingerprint]:
			r.Stats.Ignored++
		case baseline[f.Fingerprint]:
			r.Stats.Baseline++
		default:
			out = append(out, f)
		}
	}
	r.Findings = out
}

// Sort orders findings by layer, path, line and rule: reports are stable across runs.
func (r *Report) Sort() {
	slices.SortStableFunc(r.Findings, func(a, b Finding) int {
		la, lb := -1, -1
		if a.LayerIndex != nil {
			la = *a.LayerIndex
		}
		if b.LayerIndex != nil {
			lb = *b.LayerIndex
		}
		if la != lb {
			return la - lb
		}
		if c := strings.Compare(a.Path, b.Path); c != 0 {
			return c
		}
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		if c := strings.Compare(a.Rule, b.Rule); c != 0 {
			return c
		}
		return strings.Compare(a.Fingerprint, b.Fingerprint)
	})
	slices.SortStableFunc(r.Problems, func(a, b Problem) int {
		return strings.Compare(a.String(), b.String())
	})
}

func short(digest string) string {
	if i := strings.IndexByte(digest, ':'); i >= 0 && len(digest) > i+13 {
		return digest[:i+13]
	}
	return digest
}
