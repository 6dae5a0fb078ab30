package rules

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/viper"
)

func TestDefaultLeavesGlobalViperAlone(t *testing.T) {
	before := len(viper.AllKeys())
	cfg, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	if got := len(cfg.Rules); got < 200 {
		t.Errorf("Default() has %d rules; want the ~220 gitleaks defaults", got)
	}
	if _, ok := cfg.Rules["aws-access-token"]; !ok {
		t.Error("Default() lacks aws-access-token")
	}
	if len(cfg.Allowlists) == 0 {
		t.Error("Default() lost the global allowlist")
	}
	if after := len(viper.AllKeys()); after != before {
		t.Errorf("global viper keys went from %d to %d; Default must not touch it", before, after)
	}
}

func TestLoadUserRules(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	custom := `
[[rules]]
id = "acme-token"
description = "ACME token"
regex = '''acme_[a-z0-9]{32}'''
keywords = ["acme_"]
`
	tests := []struct {
		name      string
		body      string
		wantRules []string
		notRules  []string
		wantErr   bool
	}{
		{name: "replace", body: custom, wantRules: []string{"acme-token"}, notRules: []string{"aws-access-token"}},
		{name: "extend", body: "[extend]\nuseDefault = true\ndisabledRules = [\"jwt\"]\n" + custom,
			wantRules: []string{"acme-token", "aws-access-token"}, notRules: []string{"jwt"}},
		{name: "bad regex", body: "[[rules]]\nid = \"x\"\nregex = '''(['''\n", wantErr: true},
		{name: "bad toml", body: "[[rules]\n", wantErr: true},
		{name: "extend path", body: "[extend]\npath = \"other.toml\"\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(write(tt.name+".toml", tt.body))
			if (err != nil) != tt.wantErr {
				t.Fatalf("Load() error = %v; wantErr %v", err, tt.wantErr)
			}
			for _, id := range tt.wantRules {
				if _, ok := cfg.Rules[id]; !ok {
					t.Errorf("rule %s missing", id)
				}
			}
			for _, id := range tt.notRules {
				if _, ok := cfg.Rules[id]; ok {
					t.Errorf("rule %s present; want it gone", id)
				}
			}
		})
	}
}
