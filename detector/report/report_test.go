package report

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func finding(rule, path string, status Status, secret string) Finding {
	return Finding{Rule: rule, Path: path, Status: status, Secret: Redact(secret), Fingerprint: Fingerprint(rule, "sha256:aa", path, secret)}
}

func TestFingerprintIgnoresLines(t *testing.T) {
	a := Fingerprint("r", "sha256:aa", "/p", "s3cret-value")
	if a != Fingerprint("r", "sha256:aa", "/p", "s3cret-value") {
		t.Error("fingerprint is not deterministic")
	}
	for _, other := range []string{
		Fingerprint("r2", "sha256:aa", "/p", "s3cret-value"),
		Fingerprint("r", "sha256:bb", "/p", "s3cret-value"),
		Fingerprint("r", "sha256:aa", "/q", "s3cret-value"),
		Fingerprint("r", "sha256:aa", "/p", "other-value"),
	} {
		if other == a {
			t.Errorf("fingerprints collide: %s", a)
		}
	}
	if strings.Contains(a, "s3cret") {
		t.Errorf("fingerprint %s contains the secret", a)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"":                          "",
		"short":                     "REDACTED",
		"AKIA" + "Q3EGRVPOLKJH7XYZ": "AKIA…REDACTED",
		"exactly-16-chars":          "exac…REDACTED",
		"fifteen-chars15":           "REDACTED",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestDropIgnoreAndBaseline(t *testing.T) {
	a := finding("aws-access-token", "/app/.env", Present, "AKIA"+"Q3EGRVPOLKJH7XYZ")
	b := finding("github-pat", "/app/x", Deleted, "ghp_"+"8Xk2Lq9ZpR4vT7mN1cW5yB3hJ6gF0dS2aQ4e")
	c := finding("slack-bot-token", "/app/y", Overwritten, "xoxb-"+"1234567890123-1234567890123-abc")
	dir := t.TempDir()
	ignorePath := filepath.Join(dir, ".sidekeyignore")
	if err := os.WriteFile(ignorePath, []byte("# reviewed: test fixture\n\n"+a.Fingerprint+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := Report{Image: "old", Findings: []Finding{b}}
	data, _ := json.Marshal(old)
	basePath := filepath.Join(dir, "baseline.json")
	if err := os.WriteFile(basePath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ignore, err := ReadIgnoreFile(ignorePath)
	if err != nil {
		t.Fatal(err)
	}
	baseline, err := ReadBaseline(basePath)
	if err != nil {
		t.Fatal(err)
	}
	r := Report{Findings: []Finding{a, b, c}}
	r.Drop(ignore, baseline)
	if diff := cmp.Diff([]Finding{c}, r.Findings); diff != "" {
		t.Errorf("after Drop (-want +got):\n%s", diff)
	}
	if r.Stats.Ignored != 1 || r.Stats.Baseline != 1 {
		t.Errorf("stats = %+v; want 1 ignored, 1 baseline", r.Stats)
	}
	if missing, err := ReadIgnoreFile(filepath.Join(dir, "none")); err != nil || len(missing) != 0 {
		t.Errorf("missing ignore file: %v, %v; want empty, nil", missing, err)
	}
	if _, err := ReadBaseline(ignorePath); err == nil {
		t.Error("ReadBaseline accepted a file that is not a JSON report")
	}
}

func TestFailing(t *testing.T) {
	r := Report{Findings: []Finding{
		finding("a", "/a", Present, "x"), finding("b", "/b", Deleted, "y"), finding("c", "Env", Metadata, "z"),
	}}
	tests := []struct {
		failOn []Status
		want   int
	}{
		{nil, 3},
		{[]Status{Present}, 1},
		{[]Status{Deleted, Overwritten}, 1},
		{[]Status{Overwritten}, 0},
	}
	for _, tt := range tests {
		if got := len(r.Failing(tt.failOn)); got != tt.want {
			t.Errorf("Failing(%v) = %d findings; want %d", tt.failOn, got, tt.want)
		}
	}
	if _, err := ParseStatus("gone"); err == nil {
		t.Error("ParseStatus(gone) succeeded")
	}
}

func TestSARIFShape(t *testing.T) {
	l := 2
	f := finding("github-pat", "/app/lib.jar!a/b.txt", Present, "ghp_"+"8Xk2Lq9ZpR4vT7mN1cW5yB3hJ6gF0dS2aQ4e")
	f.LayerIndex, f.Line, f.Description = &l, 3, "GitHub PAT"
	r := Report{Image: "img", Findings: []Finding{f}}
	var b strings.Builder
	if err := r.WriteSARIF(&b); err != nil {
		t.Fatal(err)
	}
	var log struct {
		Version string `json:"version"`
		Runs    []struct {
			Tool struct {
				Driver struct {
					Rules []struct{ ID string } `json:"rules"`
				} `json:"driver"`
			} `json:"tool"`
			Results []struct {
				RuleID    string `json:"ruleId"`
				Locations []struct {
					PhysicalLocation struct {
						ArtifactLocation struct{ URI string }    `json:"artifactLocation"`
						Region           struct{ StartLine int } `json:"region"`
					} `json:"physicalLocation"`
				} `json:"locations"`
				PartialFingerprints map[string]string `json:"partialFingerprints"`
			} `json:"results"`
		} `json:"runs"`
	}
	if err := json.Unmarshal([]byte(b.String()), &log); err != nil {
		t.Fatal(err)
	}
	if log.Version != "2.1.0" || len(log.Runs) != 1 || len(log.Runs[0].Results) != 1 || len(log.Runs[0].Tool.Driver.Rules) != 1 {
		t.Fatalf("unexpected SARIF shape: %s", b.String())
	}
	res := log.Runs[0].Results[0]
	loc := res.Locations[0].PhysicalLocation
	if res.RuleID != "github-pat" || loc.ArtifactLocation.URI != "app/lib.jar" || loc.Region.StartLine != 3 || res.PartialFingerprints["sidekey/v1"] != f.Fingerprint {
		t.Errorf("result = %+v", res)
	}
}
