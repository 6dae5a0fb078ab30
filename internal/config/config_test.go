package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type testConfig struct {
	Addr    string        `mapstructure:"addr"`
	Timeout time.Duration `mapstructure:"timeout"`
	Workers int           `mapstructure:"workers"`
	Allow   []string      `mapstructure:"allow"`
}

func (c *testConfig) Validate() error {
	if c.Workers < 1 {
		return errorString("workers: must be at least 1")
	}
	return nil
}

type errorString string

func (e errorString) Error() string { return string(e) }

func flags(args ...string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("addr", ":8443", "")
	fs.Duration("timeout", time.Second, "")
	fs.Int("workers", 2, "")
	fs.StringSlice("allow", nil, "")
	AddFileFlag(fs)
	if err := fs.Parse(args); err != nil {
		panic(err)
	}
	return fs
}

func TestLoadPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("addr: from-file\ntimeout: 3s\nworkers: 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SIDEKEY_TIMEOUT", "7s")
	var c testConfig
	if err := Load(flags("--config", file, "--workers", "9", "--allow", "/bin/a,/bin/b"), &c); err != nil {
		t.Fatal(err)
	}
	want := testConfig{Addr: "from-file", Timeout: 7 * time.Second, Workers: 9, Allow: []string{"/bin/a", "/bin/b"}}
	if c.Addr != want.Addr || c.Timeout != want.Timeout || c.Workers != want.Workers || strings.Join(c.Allow, ",") != "/bin/a,/bin/b" {
		t.Errorf("Load = %+v; want %+v (flag > env > file > default)", c, want)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "u.yaml")
	if err := os.WriteFile(unknown, []byte("adr: typo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string
	}{
		{"unknown file key", nil, []string{"--config", unknown}, "unknown keys adr"},
		{"missing file", nil, []string{"--config", filepath.Join(dir, "nope.yaml")}, "read config file"},
		{"bad env type", map[string]string{"SIDEKEY_WORKERS": "many"}, nil, "workers"},
		{"bad env duration", map[string]string{"SIDEKEY_TIMEOUT": "soon"}, nil, "timeout"},
		{"validate", map[string]string{"SIDEKEY_WORKERS": "0"}, nil, "workers: must be at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var c testConfig
			err := Load(flags(tt.args...), &c)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Load() error = %v; want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
