package match_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/zricethezav/gitleaks/v8/config"
	"github.com/zricethezav/gitleaks/v8/detect"

	"github.com/sidekey/sidekey/detector/match"
	"github.com/sidekey/sidekey/detector/rules"
)

var defaults = sync.OnceValues(func() (config.Config, error) { return rules.Default() })

func engine(t testing.TB) *match.Engine {
	t.Helper()
	cfg, err := defaults()
	if err != nil {
		t.Fatal(err)
	}
	return match.New(cfg)
}

var (
	ghPAT  = "ghp_" + "8Xk2Lq9ZpR4vT7mN1cW5yB3hJ6gF0dS2aQ4e"
	awsKey = "AKIA" + "Q3EGRVPOLKJH7XYZ"
)

type hit struct {
	Rule   string
	Line   int
	Secret string
}

func hits(s *match.Scanner, path, content string) []hit {
	var out []hit
	for _, h := range s.Scan(path, []byte(content), 1) {
		out = append(out, hit{h.RuleID, h.Line, h.Secret})
	}
	return out
}

func TestScan(t *testing.T) {
	key := "-----BEGIN RSA " + "PRIVATE KEY-----\n" + strings.Repeat("MIIEowIBAAKCAQEAx5Jk3pQ9v2Lm8RtY7wZ1cB4nH6gF0dS2aQ4eT8Xk2Lq9ZpR4\n", 20) + "-----END RSA PRIVATE KEY-----"
	longLine := strings.Repeat("a", 200<<10) + " token: " + ghPAT + "\n"
	tests := []struct {
		name, path, content string
		want                []hit
	}{
		{name: "keyword match", path: "a.txt", content: "x\ny\ntoken: " + ghPAT + "\n", want: []hit{{"github-pat", 3, ghPAT}}},
		{name: "two rules two lines", path: "a.txt", content: "id=" + awsKey + "\n\ngh " + ghPAT, want: []hit{{"aws-access-token", 1, awsKey}, {"github-pat", 3, ghPAT}}},
		{name: "upper-case keyword", path: "a.txt", content: "ID=" + strings.ToUpper(awsKey) + "\n", want: []hit{{"aws-access-token", 1, awsKey}}},
		{name: "private key spans lines", path: "k.txt", content: "prefix\n" + key + "\n", want: []hit{{"private-key", 2, key}}},
		{name: "secret far into a long line", path: "min.js", content: longLine, want: []hit{{"github-pat", 1, ghPAT}}},
		{name: "gitleaks:allow", path: "a.txt", content: "token: " + ghPAT + " # gitleaks:allow\n"},
		{name: "example key stopword", path: "a.txt", content: "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"},
		{name: "global path allowlist", path: "app/node_modules/x/index.js", content: "token: " + ghPAT},
		{name: "path rule", path: "certs/client.p12", content: "", want: []hit{{"pkcs12-file", 0, "file detected: certs/client.p12"}}},
		{name: "low entropy generic", path: "a.txt", content: "password = aaaaaaaaaaaaaaaa\n"},
		{name: "generic dropped for specific", path: "a.env", content: "GITHUB_TOKEN=" + ghPAT + "\n", want: []hit{{"github-pat", 1, ghPAT}}},
	}
	s := engine(t).NewScanner()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, hits(s, tt.path, tt.content)); diff != "" {
				t.Errorf("Scan (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRuleWithoutKeywordsScansEverything(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "r.toml")
	if err := os.WriteFile(p, []byte("[[rules]]\nid = \"acme\"\nregex = '''acme_[a-z0-9]{16}'''\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := rules.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	got := hits(match.New(cfg).NewScanner(), "x", "a\nb acme_0123456789abcdef\n")
	if diff := cmp.Diff([]hit{{"acme", 2, "acme_0123456789abcdef"}}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// corpus returns text files from the Go tree (with test keys and tokens in them) plus some
// crafted ones.
func corpus(t testing.TB, dirs ...string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, d := range dirs {
		root := filepath.Join(runtime.GOROOT(), d)
		_ = filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return nil
			}
			data, err := os.ReadFile(p)
			if err == nil && bytes.IndexByte(data[:min(len(data), 8000)], 0) < 0 {
				files[p] = data
			}
			return nil
		})
	}
	if len(files) == 0 {
		t.Fatalf("no files under GOROOT %v", dirs)
	}
	return files
}

// TestFindsWhatGitleaksLibraryFinds compares with gitleaks' own detector (its library,
// same rules, decoding off): every (file, line, secret) it reports, the engine reports.
func TestFindsWhatGitleaksLibraryFinds(t *testing.T) {
	cfg, err := defaults()
	if err != nil {
		t.Fatal(err)
	}
	files := corpus(t, "src/crypto/x509", "src/crypto/tls")
	files["crafted/.env"] = []byte("AWS_ACCESS_KEY_ID=" + awsKey + "\nGITHUB=" + ghPAT + "\npassword = \"p7Gq2Lx9Vw4Rz8Tk\"\n")
	gl := detect.NewDetector(cfg)
	s := match.New(cfg).NewScanner()
	total := 0
	for p, data := range files {
		ours := map[string]bool{}
		for _, h := range s.Scan(p, data, 1) {
			ours[fmt.Sprint(h.Line, h.Secret)] = true
		}
		for _, f := range gl.Detect(detect.Fragment{Raw: string(data), FilePath: p, StartLine: 1}) {
			total++
			if !ours[fmt.Sprint(f.StartLine, f.Secret)] {
				t.Errorf("gitleaks finds %s at %s:%d; the engine does not", f.RuleID, p, f.StartLine)
			}
		}
	}
	if total < 5 {
		t.Fatalf("gitleaks found only %d secrets: the corpus is wrong", total)
	}
}

// FuzzScan runs the engine on arbitrary content: hits lie inside the content.
func FuzzScan(f *testing.F) {
	f.Add("a.txt", "token: "+ghPAT+"\n")
	f.Add("k.pem", "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----")
	f.Add("x", "api_key = '\xff\xfe"+awsKey+"'")
	e := engine(f)
	f.Fuzz(func(t *testing.T, path, content string) {
		s := e.NewScanner()
		for _, h := range s.Scan(path, []byte(content), 1) {
			if h.Start < 0 || h.End > len(content) || h.Start > h.End {
				t.Fatalf("%s: span [%d,%d) outside %d bytes", h.RuleID, h.Start, h.End, len(content))
			}
		}
	})
}

// BenchmarkScan compares the engine with gitleaks' detector (its library, default rules,
// decoding off) on text files of the Go tree. Compare the MB/s of the two sub-benchmarks:
//
//	go test ./detector/match -run XXX -bench Scan -benchtime 3x
func BenchmarkScan(b *testing.B) {
	cfg, err := defaults()
	if err != nil {
		b.Fatal(err)
	}
	files := corpus(b, "src/net", "src/crypto")
	var size int64
	for _, d := range files {
		size += int64(len(d))
	}
	b.Run("sidekey", func(b *testing.B) {
		s := match.New(cfg).NewScanner()
		b.SetBytes(size)
		for b.Loop() {
			for p, d := range files {
				s.Scan(p, d, 1)
			}
		}
	})
	b.Run("gitleaks", func(b *testing.B) {
		gl := detect.NewDetector(cfg)
		b.SetBytes(size)
		for b.Loop() {
			for p, d := range files {
				gl.Detect(detect.Fragment{Raw: string(d), FilePath: p})
			}
		}
	})
}
