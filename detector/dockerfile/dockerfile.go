// Package dockerfile checks a Dockerfile statically, before any build: secret values in
// ENV, ARG and LABEL, build arguments named like secrets (their values end up in the image
// history), and COPY/ADD of credential files. Each finding suggests
// `RUN --mount=type=secret` instead.
package dockerfile

import (
	"bytes"
	"encoding/json"
	"path"
	"strings"

	"github.com/sidekey/sidekey/detector"
	"github.com/sidekey/sidekey/detector/match"
	"github.com/sidekey/sidekey/detector/report"
)

// Rules of this package.
const (
	RuleSecretArg      = "sidekey-dockerfile-secret-arg"
	RuleCopyCredential = "sidekey-dockerfile-copy-credential"
)

// Instruction is one Dockerfile instruction with continuation lines joined.
type Instruction struct {
	Line int // 1-based line of the instruction's first line
	Cmd  string
	Args string
}

// Parse splits a Dockerfile into instructions. It honours `# escape=` and line
// continuations, drops comments and keeps heredoc bodies out of the arguments.
func Parse(data []byte) []Instruction {
	escape := byte('\\')
	lines := strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n")
	var out []Instruction
	var cur *Instruction
	var heredoc string
	for i, raw := range lines {
		line := strings.TrimRight(raw, " \t")
		if heredoc != "" {
			if strings.TrimSpace(line) == heredoc {
				heredoc = ""
			}
			continue
		}
		trimmed := strings.TrimSpace(line)
		if cur == nil {
			if trimmed == "" {
				continue
			}
			if strings.HasPrefix(trimmed, "#") {
				if d, ok := strings.CutPrefix(strings.ReplaceAll(trimmed, " ", ""), "#escape="); ok && len(out) == 0 && d != "" {
					escape = d[0]
				}
				continue
			}
			cmd, args, _ := strings.Cut(trimmed, " ")
			cur = &Instruction{Line: i + 1, Cmd: strings.ToUpper(cmd)}
			line = args
		} else if strings.HasPrefix(trimmed, "#") {
			continue
		}
		cont := len(line) > 0 && line[len(line)-1] == escape
		if cont {
			line = line[:len(line)-1]
		}
		cur.Args = strings.TrimSpace(cur.Args + " " + strings.TrimSpace(line))
		if !cont {
			if j := strings.Index(cur.Args, "<<"); j >= 0 && (cur.Cmd == "RUN" || cur.Cmd == "COPY") {
				word := strings.Trim(strings.Fields(cur.Args[j+2:] + " x")[0], `-"'`)
				heredoc = word
			}
			out = append(out, *cur)
			cur = nil
		}
	}
	if cur != nil {
		out = append(out, *cur)
	}
	return out
}

// Check returns the report of the Dockerfile at name with content data.
func Check(engine *match.Engine, name string, data []byte) *report.Report {
	sc := engine.NewScanner()
	r := &report.Report{Image: name}
	add := func(in Instruction, key string, h match.Hit) {
		r.Findings = append(r.Findings, report.Finding{
			Rule: h.RuleID, Description: h.Description, Source: report.SourceDockerfile, Path: name,
			Status: report.Present, Key: key, Line: in.Line, Secret: report.Redact(h.Secret), Entropy: h.Entropy,
			Fingerprint: report.Fingerprint(h.RuleID, "", name+"/"+in.Cmd+"/"+key, h.Secret),
		})
	}
	for _, in := range Parse(data) {
		switch in.Cmd {
		case "ENV", "LABEL":
			for _, kv := range pairs(in.Args, in.Cmd == "ENV") {
				for _, h := range detector.KeyValueHits(sc, in.Cmd, kv[0], kv[1]) {
					h.Description += "; pass it at run time or with RUN --mount=type=secret"
					add(in, kv[0], h)
				}
			}
		case "ARG":
			for _, kv := range pairs(in.Args, false) {
				hits := detector.KeyValueHits(sc, in.Cmd, kv[0], kv[1])
				for _, h := range hits {
					add(in, kv[0], h)
				}
				if len(hits) == 0 && detector.SecretName(kv[0]) {
					add(in, kv[0], match.Hit{RuleID: RuleSecretArg,
						Description: "build argument " + kv[0] + " looks like a secret: build arguments are recorded in the image history; use RUN --mount=type=secret,id=" + strings.ToLower(kv[0]) + " instead"})
				}
			}
		case "COPY", "ADD":
			for _, src := range copySources(in.Args) {
				if why := credentialFile(src); why != "" {
					add(in, src, match.Hit{RuleID: RuleCopyCredential,
						Description: "copies " + why + " into the image; mount it at build time with RUN --mount=type=secret instead"})
				}
			}
		}
	}
	r.Sort()
	return r
}

// pairs splits ENV/LABEL/ARG arguments into key/value pairs: `K=V K2="a b"`, or the legacy
// `ENV K some value` form when legacy is set.
func pairs(args string, legacy bool) [][2]string {
	toks := fields(args)
	if len(toks) == 0 {
		return nil
	}
	if legacy && !strings.Contains(toks[0], "=") {
		rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(args), toks[0]))
		return [][2]string{{toks[0], unquote(rest)}}
	}
	var out [][2]string
	for _, t := range toks {
		k, v, _ := strings.Cut(t, "=")
		out = append(out, [2]string{unquote(k), unquote(v)})
	}
	return out
}

// fields splits on spaces outside quotes.
func fields(s string) []string {
	var out []string
	var b bytes.Buffer
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' && i+1 < len(s) && quote == '"' {
				i++
				b.WriteByte(s[i])
				continue
			}
			if c == quote {
				quote = 0
			}
			b.WriteByte(c)
		case c == '"' || c == '\'':
			quote = c
			b.WriteByte(c)
		case c == ' ' || c == '\t':
			if b.Len() > 0 {
				out = append(out, b.String())
				b.Reset()
			}
		default:
			b.WriteByte(c)
		}
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

// copySources returns the source operands of COPY/ADD (flags and the destination dropped),
// in shell form or JSON form.
func copySources(args string) []string {
	rest := strings.TrimSpace(args)
	for strings.HasPrefix(rest, "--") {
		_, after, _ := strings.Cut(rest, " ")
		rest = strings.TrimSpace(after)
	}
	var ops []string
	if strings.HasPrefix(rest, "[") {
		if err := json.Unmarshal([]byte(rest), &ops); err != nil {
			return nil
		}
	} else {
		for _, t := range fields(rest) {
			ops = append(ops, unquote(t))
		}
	}
	if len(ops) < 2 {
		return nil
	}
	return ops[:len(ops)-1]
}

// credentialFile says which kind of credential file src names, or "".
func credentialFile(src string) string {
	p := strings.TrimSuffix(path.Clean(strings.ReplaceAll(src, "\\", "/")), "/")
	b := path.Base(p)
	switch b {
	case ".npmrc", ".pypirc", ".netrc", "_netrc", ".git-credentials", ".pgpass", ".dockercfg":
		return "a credential file (" + b + ")"
	case "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519":
		return "an SSH private key (" + b + ")"
	case ".env", ".aws", ".ssh", ".kube", ".docker", ".gnupg":
		return "a secrets file or directory (" + b + ")"
	case "credentials":
		if strings.Contains(p, ".aws") {
			return "AWS credentials"
		}
	case "config.json":
		if strings.Contains(p, ".docker") {
			return "Docker registry credentials"
		}
	case "config":
		if strings.Contains(p, ".kube") {
			return "a kubeconfig"
		}
	}
	if strings.Contains(strings.ToLower(b), "kubeconfig") {
		return "a kubeconfig"
	}
	switch path.Ext(b) {
	case ".pem", ".key", ".p12", ".pfx", ".jks", ".keystore":
		return "a key or keystore (" + b + ")"
	}
	return ""
}
