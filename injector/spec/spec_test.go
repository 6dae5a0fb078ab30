package spec

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseSource(t *testing.T) {
	tests := []struct {
		in      string
		want    Source
		wantErr string
	}{
		{in: "vault:secret/data/app", want: Source{Backend: "vault", Path: "secret/data/app"}},
		{in: "vault:secret/data/app#password", want: Source{Backend: "vault", Path: "secret/data/app", Key: "password"}},
		{in: "vault:/database/creds/app/", want: Source{Backend: "vault", Path: "database/creds/app"}},
		{in: "aws-sm:prod/db", want: Source{Backend: "aws-sm", Path: "prod/db"}},
		{in: "aws-sm:arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf#password@AWSPREVIOUS",
			want: Source{Backend: "aws-sm", Path: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf", Key: "password", VersionStage: "AWSPREVIOUS"}},
		{in: "aws-sm:user@example", want: Source{Backend: "aws-sm", Path: "user@example"}},
		{in: "aws-ssm:/prod/db/password", want: Source{Backend: "aws-ssm", Path: "/prod/db/password"}},
		{in: "aws-ssm:/prod#x", wantErr: "no keys"},
		{in: "gcp:foo", wantErr: "unknown backend"},
		{in: "vault:", wantErr: "want <backend>"},
		{in: "secret/data/app", wantErr: "want <backend>"},
		{in: "vault:#key", wantErr: "empty path"},
		{in: "vault:a/../b", wantErr: "contains .."},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSource(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSource(%q) error = %v; want it to contain %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSource(%q): %v", tt.in, err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("ParseSource(%q) (-want +got):\n%s", tt.in, d)
			}
			again, err := ParseSource(got.String())
			if err != nil || again != got {
				t.Errorf("ParseSource(%q.String()) = %+v, %v; want round trip", got, again, err)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"0400": 0o400, "440": 0o440, "0": 0, "0777": 0o777} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %o, %v; want %o", in, got, err, want)
		}
	}
	for _, in := range []string{"", "08", "1777", "rw", "04000", "-1"} {
		if _, err := ParseMode(in); err == nil {
			t.Errorf("ParseMode(%q) succeeded; want error", in)
		}
	}
}

func TestCleanFile(t *testing.T) {
	for in, want := range map[string]string{"db": "db", "a/b/../c": "a/c", "./x": "x"} {
		if got, err := CleanFile(in); err != nil || got != want {
			t.Errorf("CleanFile(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "/etc/passwd", "..", "../x", "a/../../x", ".sidekey-ready"} {
		if _, err := CleanFile(in); err == nil {
			t.Errorf("CleanFile(%q) succeeded; want error", in)
		}
	}
}

func TestSpecRoundTrip(t *testing.T) {
	uid := int64(1000)
	s := Spec{
		Version: Version, MountPath: "/run/secrets/sidekey", Mode: ModeSidecar, Refresh: Duration(300e9),
		Vault: &Vault{Addr: "https://vault:8200", Role: "app", AuthPath: "auth/kubernetes", TokenPath: "/var/run/secrets/sidekey/token"},
		Secrets: []Secret{
			{Name: "db", File: "db", Mode: 0o400, UID: &uid, Source: &Source{Backend: "vault", Path: "secret/data/db", Key: "password"}},
			{Name: "dsn", File: "dsn", Mode: 0o440, Template: `{{ (secret "vault:database/creds/app").username }}`,
				Sources: []Source{{Backend: "vault", Path: "database/creds/app"}}},
		},
		OnChange: OnChange{Kind: OnChangeSignal, Container: "app", Signal: "SIGHUP"},
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"mode":"0400"`) || !strings.Contains(string(b), `"refresh":"5m0s"`) {
		t.Errorf("json = %s; want octal mode string and duration string", b)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if d := cmp.Diff(&s, got); d != "" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
}

func TestValidate(t *testing.T) {
	base := func() Spec {
		return Spec{Version: 1, MountPath: "/run/s", Mode: ModeInitOnly, Vault: &Vault{Addr: "http://v"},
			Secrets: []Secret{{Name: "a", File: "a", Mode: 0o400, Source: &Source{Backend: "vault", Path: "p"}}}}
	}
	tests := []struct {
		name    string
		mutate  func(*Spec)
		wantErr string
	}{
		{"ok", func(*Spec) {}, ""},
		{"version", func(s *Spec) { s.Version = 2 }, "spec version 2"},
		{"relative mount", func(s *Spec) { s.MountPath = "run" }, "must be absolute"},
		{"sidecar without refresh", func(s *Spec) { s.Mode = ModeSidecar }, "refresh"},
		{"duplicate file", func(s *Spec) {
			s.Secrets = append(s.Secrets, Secret{Name: "b", File: "a", Source: s.Secrets[0].Source})
		}, "also written by"},
		{"no vault", func(s *Spec) { s.Vault = nil }, "no vault settings"},
		{"both", func(s *Spec) { s.Secrets[0].Template = "x" }, "exactly one"},
		{"escape", func(s *Spec) { s.Secrets[0].File = "../x" }, "inside the mount"},
		{"signal", func(s *Spec) { s.OnChange = OnChange{Kind: "signal"} }, "needs container"},
		{"kind", func(s *Spec) { s.OnChange = OnChange{Kind: "email"} }, "onChange kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base()
			tt.mutate(&s)
			err := s.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v; want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseTemplate(t *testing.T) {
	_, srcs, err := ParseTemplate("dsn", `{{ with secret "vault:database/creds/app" }}postgres://{{ .username }}:{{ .password | urlquery }}@db{{ end }}?k={{ secret "aws-ssm:/k" }}{{ if true }}{{ secret "vault:database/creds/app" }}{{ end }}`)
	if err != nil {
		t.Fatal(err)
	}
	want := []Source{{Backend: "vault", Path: "database/creds/app"}, {Backend: "aws-ssm", Path: "/k"}}
	if d := cmp.Diff(want, srcs); d != "" {
		t.Errorf("sources (-want +got):\n%s", d)
	}
	for _, bad := range []string{`{{ secret .x }}`, `{{ secret "nope:x" }}`, `plain text`, `{{ secret "vault:a" `, `{{ secret "vault:a" "b" }}`} {
		if _, _, err := ParseTemplate("t", bad); err == nil {
			t.Errorf("ParseTemplate(%q) succeeded; want error", bad)
		}
	}
}

func FuzzParseSource(f *testing.F) {
	for _, s := range []string{"vault:a/b#c", "aws-sm:arn:aws:x#k@AWSCURRENT", "aws-ssm:/p", ":", "vault:#"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		src, err := ParseSource(s)
		if err != nil {
			return
		}
		if src.Path == "" {
			t.Fatalf("ParseSource(%q) gave an empty path", s)
		}
	})
}

func TestLoadWithoutSpec(t *testing.T) {
	for _, v := range []string{"", "  "} {
		t.Setenv(EnvVar, v)
		if _, err := Load(""); err == nil || !strings.Contains(err.Error(), "no spec") {
			t.Errorf("Load with %s=%q: error = %v; want one saying there is no spec", EnvVar, v, err)
		}
	}
}
