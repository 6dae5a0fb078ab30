package dockerfile_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sidekey/sidekey/detector/credfile"
	"github.com/sidekey/sidekey/detector/dockerfile"
	"github.com/sidekey/sidekey/detector/match"
	"github.com/sidekey/sidekey/detector/rules"
)

func TestParse(t *testing.T) {
	src := "# syntax=docker/dockerfile:1\nFROM alpine:3.20 AS build\n# a comment\nRUN apk add \\\n    curl \\\n    # inline comment\n    git\nCOPY <<EOF /etc/motd\nhello ENV X=1\nEOF\nENV A=1 B=\"two words\"\n"
	want := []dockerfile.Instruction{
		{Line: 2, Cmd: "FROM", Args: "alpine:3.20 AS build"},
		{Line: 4, Cmd: "RUN", Args: "apk add curl git"},
		{Line: 8, Cmd: "COPY", Args: "<<EOF /etc/motd"},
		{Line: 11, Cmd: "ENV", Args: `A=1 B="two words"`},
	}
	if diff := cmp.Diff(want, dockerfile.Parse([]byte(src))); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
}

func TestCheck(t *testing.T) {
	cfg, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	e := match.New(cfg, credfile.All()...)
	pat := "ghp_" + "8Xk2Lq9ZpR4vT7mN1cW5yB3hJ6gF0dS2aQ4e"
	src := `FROM node:22
ARG NPM_TOKEN
ARG VERSION=1.2.3
ENV GITHUB_TOKEN=` + pat + `
ENV API_KEY=${API_KEY} LOG_LEVEL=info
ENV DB_PASSWORD p7Gq2Lx9Vw4Rz8Tk
LABEL org.opencontainers.image.source="https://github.com/acme/app"
COPY .npmrc package.json ./
COPY --chown=app:app ["id_rsa", "/home/app/.ssh/id_rsa"]
ADD certs/server.key /etc/ssl/private/
COPY src/ /app/src/
RUN --mount=type=secret,id=npm,target=/root/.npmrc npm ci
`
	type brief struct {
		Rule, Key string
		Line      int
	}
	var got []brief
	for _, f := range dockerfile.Check(e, "Dockerfile", []byte(src)).Findings {
		got = append(got, brief{f.Rule, f.Key, f.Line})
	}
	want := []brief{
		{"sidekey-dockerfile-secret-arg", "NPM_TOKEN", 2},
		{"github-pat", "GITHUB_TOKEN", 4},
		{"generic-api-key", "DB_PASSWORD", 6},
		{"sidekey-dockerfile-copy-credential", ".npmrc", 8},
		{"sidekey-dockerfile-copy-credential", "id_rsa", 9},
		{"sidekey-dockerfile-copy-credential", "certs/server.key", 10},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
}

// FuzzParse checks the parser on arbitrary input: every instruction has a line in range.
func FuzzParse(f *testing.F) {
	f.Add("FROM a\nRUN x \\\n y\n")
	f.Add("# escape=`\nRUN a `\n b\n")
	f.Add("RUN <<EOT\nbody\nEOT\nENV a=b\n")
	f.Fuzz(func(t *testing.T, src string) {
		lines := 1
		for _, c := range src {
			if c == '\n' {
				lines++
			}
		}
		for _, in := range dockerfile.Parse([]byte(src)) {
			if in.Line < 1 || in.Line > lines {
				t.Fatalf("instruction %q on line %d of %d", in.Cmd, in.Line, lines)
			}
		}
	})
}
