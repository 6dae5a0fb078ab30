package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// runDetectCmd runs `sidekey detect args...` in dir and returns stdout and the exit code.
func runDetectCmd(t *testing.T, dir string, args ...string) (string, int) {
	t.Helper()
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	cmd := newDetectCmd()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err := cmd.Execute()
	code := 0
	if err != nil {
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
	}
	return out.String(), code
}

func TestDetectExitCodes(t *testing.T) {
	pat := "ghp_" + "8Xk2Lq9ZpR4vT7mN1cW5yB3hJ6gF0dS2aQ4e"
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	clean := filepath.Join(dir, "clean")
	for p, body := range map[string]string{
		filepath.Join(tree, "app", "deploy.sh"): "GH=" + pat + "\n",
		filepath.Join(clean, "README"):          "nothing to see\n",
		filepath.Join(dir, "Dockerfile"):        "FROM alpine\nARG NPM_TOKEN\nCOPY .npmrc /root/\n",
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	out, code := runDetectCmd(t, dir, "dir", "tree", "--format", "json")
	if code != 1 {
		t.Fatalf("detect dir with a secret: exit %d; want 1\n%s", code, out)
	}
	if strings.Contains(out, pat) || strings.Contains(out, pat[4:20]) {
		t.Errorf("the JSON report contains the secret:\n%s", out)
	}
	var rep struct {
		Findings []struct{ Rule, Path, Status, Fingerprint string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Findings) != 1 || rep.Findings[0].Rule != "github-pat" {
		t.Fatalf("report = %+v (%v); want one github-pat finding", rep, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "previous.json"), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		args []string
		want int
	}{
		{"clean dir", []string{"dir", "clean"}, 0},
		{"sarif", []string{"dir", "tree", "--format", "sarif"}, 1},
		{"fail-on excludes present", []string{"dir", "tree", "--fail-on", "deleted,metadata"}, 0},
		{"baseline", []string{"dir", "tree", "--baseline", "previous.json"}, 0},
		{"dockerfile", []string{"dockerfile", "Dockerfile"}, 1},
		{"missing image", []string{"image", "oci-archive:" + filepath.Join(dir, "none.tar")}, 2},
		{"bad format", []string{"dir", "tree", "--format", "xml"}, 2},
		{"bad fail-on", []string{"dir", "tree", "--fail-on", "gone"}, 2},
		{"empty image", []string{"image", "oci:" + filepath.Join(dir, "layout")}, 2},
	}
	if _, err := layout.Write(filepath.Join(dir, "layout"), empty.Index); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if out, code := runDetectCmd(t, dir, tt.args...); code != tt.want {
				t.Errorf("detect %v: exit %d; want %d\n%s", tt.args, code, tt.want, out)
			}
		})
	}

	ignore := rep.Findings[0].Fingerprint + "\n"
	if err := os.WriteFile(filepath.Join(dir, ".sidekeyignore"), []byte(ignore), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := runDetectCmd(t, dir, "dir", "tree"); code != 0 {
		t.Errorf("with .sidekeyignore: exit %d; want 0\n%s", code, out)
	}
}
