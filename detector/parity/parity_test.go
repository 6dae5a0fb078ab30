// Package parity holds the test that runs the real gitleaks binary next to sidekey. It lives
// apart from package detector's tests so that their fuzz targets are not instrumented with
// the test-server support code it imports.
package parity_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidekey/sidekey/detector"
	"github.com/sidekey/sidekey/detector/credfile"
	"github.com/sidekey/sidekey/detector/internal/imagetest"
	"github.com/sidekey/sidekey/detector/match"
	"github.com/sidekey/sidekey/detector/rules"
	"github.com/sidekey/sidekey/internal/testenv"
)

// knownSecretsTree writes a directory tree full of secrets of many kinds, plus gitleaks'
// own test tree (testdata/repos/nogit from its module), and returns its root.
func knownSecretsTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	jwt := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" + "." + "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ" + "." + "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	files := map[string]string{
		"app/.env":                    "AWS_ACCESS_KEY_ID=" + imagetest.AWSKey + "\nDB_PASSWORD=" + imagetest.DBPassword + "\n",
		"app/config.yml":              "github:\n  token: " + imagetest.GitHubPAT + "\nslack:\n  bot: " + imagetest.SlackBot + "\n",
		"app/src/pay.js":              "const imagetest.Stripe = require('imagetest.Stripe')('" + imagetest.Stripe + "');\n",
		"app/src/auth.py":             "headers = {'Authorization': 'Bearer " + jwt + "'}\n",
		"home/u/.npmrc":               "//registry.npmjs.org/:_authToken=" + imagetest.NPMToken2 + "\n",
		"home/u/.ssh/id_ed25519":      imagetest.SSHKey(t),
		"etc/app/settings.properties": "db.user=app\ndb.password=" + imagetest.DBPassword + "X7q\napi_key = \"" + imagetest.NPMToken3[4:] + "\"\n",
		"srv/deploy.sh":               "curl -H \"Authorization: token " + imagetest.GitHubPAT2 + "\" https://api.github.com/\n",
		"docs/long.md":                strings.Repeat("filler line without secrets\n", 5000) + "export GITHUB_TOKEN=" + imagetest.GitHubPAT + "\n",
	}
	for p, body := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/zricethezav/gitleaks/v8").Output()
	if err != nil {
		t.Fatalf("locate the gitleaks module: %v", err)
	}
	nogit := filepath.Join(strings.TrimSpace(string(out)), "testdata", "repos", "nogit")
	entries, err := os.ReadDir(nogit)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == ".gitleaksignore" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(nogit, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, "gitleaks-testdata"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "gitleaks-testdata", e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestParityWithGitleaks runs the real gitleaks v8.30.1 binary (`gitleaks dir`) and sidekey
// on the same tree: every file and line gitleaks reports, sidekey reports too.
func TestParityWithGitleaks(t *testing.T) {
	gitleaks := testenv.Bin(t, "gitleaks")
	root := knownSecretsTree(t)
	reportPath := filepath.Join(t.TempDir(), "gitleaks.json")
	cmd := exec.Command(gitleaks, "dir", root, "--report-format", "json", "--report-path", reportPath, "--no-banner", "--exit-code", "0", "--log-level", "error")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gitleaks dir: %v\n%s", err, out)
	}
	data, err := os.ReadFile(reportPath)
	if err != nil {
		t.Fatal(err)
	}
	var theirs []struct {
		RuleID    string
		File      string
		StartLine int
	}
	if err := json.Unmarshal(data, &theirs); err != nil {
		t.Fatal(err)
	}
	if len(theirs) < 10 {
		t.Fatalf("gitleaks found only %d secrets in the known-secrets tree; the tree is wrong", len(theirs))
	}
	cfg, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	r, err := detector.New(match.New(cfg, credfile.All()...), detector.Options{}).ScanDir(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	type loc struct {
		path string
		line int
	}
	ours := map[loc]bool{}
	for _, f := range r.Findings {
		ours[loc{f.Path, f.Line}] = true
	}
	for _, g := range theirs {
		rel, _ := filepath.Rel(root, g.File)
		if !ours[loc{filepath.ToSlash(rel), g.StartLine}] {
			t.Errorf("gitleaks found %s at %s:%d; sidekey did not", g.RuleID, rel, g.StartLine)
		}
	}
	t.Logf("gitleaks: %d findings, sidekey: %d", len(theirs), len(r.Findings))
}
