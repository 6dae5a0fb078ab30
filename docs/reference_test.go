package docs

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sidekey/sidekey/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite reference.md")

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name, help string
		want       []Flag
	}{
		{
			name: "cobra",
			help: `Run the webhook

Usage:
  sidekey webhook [flags]

Flags:
      --agent-image string    image of the agent (default "ghcr.io/sidekey/sidekey-agent:dev")
  -h, --help                  help for webhook
      --max-body-bytes int    largest review (default 7340032)
  -o, --output string         write here
      --tls-self-managed      create a CA
      --once[=true|false]     run once
      --tls-extra-sans strings   extra names
                              e.g. 127.0.0.1

Global Flags:
      --verbose   not ours
`,
			want: []Flag{
				{Name: "agent-image", Type: "string", Default: `"ghcr.io/sidekey/sidekey-agent:dev"`, Usage: "image of the agent"},
				{Name: "max-body-bytes", Type: "int", Default: "7340032", Usage: "largest review"},
				{Name: "output", Short: "o", Type: "string", Usage: "write here"},
				{Name: "tls-self-managed", Type: "bool", Usage: "create a CA"},
				{Name: "once", Type: "bool", Usage: "run once"},
				{Name: "tls-extra-sans", Type: "strings", Usage: "extra names e.g. 127.0.0.1"},
			},
		},
		{
			name: "plain pflag usage",
			help: "Usage: sidekey-agent [flags]\n\n      --once   run once\n      --spec string   spec file\n",
			want: []Flag{{Name: "once", Type: "bool", Usage: "run once"}, {Name: "spec", Type: "string", Usage: "spec file"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, ParseFlags(tt.help)); d != "" {
				t.Errorf("ParseFlags (-want +got):\n%s", d)
			}
		})
	}
}

func FuzzParseFlags(f *testing.F) {
	f.Add("Flags:\n  -o, --output string   out (default \"x\")\n")
	f.Add("      --a\n  b\nX:\n")
	f.Fuzz(func(t *testing.T, help string) {
		for _, fl := range ParseFlags(help) {
			if fl.Name == "" || fl.Type == "" {
				t.Fatalf("ParseFlags(%q) = %+v: flag without name or type", help, fl)
			}
		}
	})
}

// TestReferenceUpToDate regenerates reference.md from the real binaries and the chart and
// compares it with the committed file (go test ./docs -update, or go generate ./docs, fixes it).
func TestReferenceUpToDate(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	helps, err := Helps(root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range Commands {
		if !strings.Contains(helps[i], "--") {
			t.Errorf("%s --help printed no flags", c.Title())
		}
	}
	values, err := os.ReadFile(filepath.Join(root, "charts", "sidekey", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := Reference(helps, values)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("reference.md", []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile("reference.md")
	if err != nil {
		t.Fatalf("%v (run go generate ./docs)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("reference.md is stale; run go generate ./docs (-committed +generated):\n%s", d)
	}
}
