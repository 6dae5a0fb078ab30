package spec

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"text/template"
	"text/template/parse"
)

// The template language of sidekey.io/template.<name>: Go text/template with these functions.
//
//	{{ secret "vault:database/creds/app" }}            all keys of a source, as a map
//	{{ secret "vault:secret/data/app#password" }}      one value, as a string
//	{{ with secret "vault:database/creds/app" }}postgres://{{ .username }}:{{ .password | urlquery }}@db/app{{ end }}
//
// Helpers: base64Encode, base64Decode, toJSON, trimSpace, plus text/template's own
// (urlquery, printf, index, ...). Source strings must be literals so the webhook can list and
// check every source a template reads before the pod is admitted.

// Lookup fetches one source for a template; it returns a map for a whole secret and a string
// for one key.
type Lookup func(Source) (any, error)

// FuncMap returns the template functions, with secret answered by lookup.
func FuncMap(lookup Lookup) template.FuncMap {
	return template.FuncMap{
		"secret": func(s string) (any, error) {
			src, err := ParseSource(s)
			if err != nil {
				return nil, err
			}
			return lookup(src)
		},
		"base64Encode": func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
		"base64Decode": func(s string) (string, error) {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return "", fmt.Errorf("base64Decode: %w", err) // the error names no value
			}
			return string(b), nil
		},
		"toJSON": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		"trimSpace": strings.TrimSpace,
	}
}

// ParseTemplate parses a secret template and returns it with every source it reads, in order
// of first use. A `secret` call whose argument is not a string literal is an error.
func ParseTemplate(name, text string) (*template.Template, []Source, error) {
	t, err := template.New(name).Option("missingkey=error").Funcs(FuncMap(nil)).Parse(text)
	if err != nil {
		return nil, nil, fmt.Errorf("parse template: %w", err)
	}
	var (
		srcs []Source
		seen = map[Source]bool{}
		errs []error
	)
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			continue
		}
		walk(tt.Tree.Root, func(cmd *parse.CommandNode) {
			if len(cmd.Args) == 0 {
				return
			}
			id, ok := cmd.Args[0].(*parse.IdentifierNode)
			if !ok || id.Ident != "secret" {
				return
			}
			if len(cmd.Args) != 2 {
				errs = append(errs, fmt.Errorf("template: secret takes exactly one source, got %s", cmd))
				return
			}
			lit, ok := cmd.Args[1].(*parse.StringNode)
			if !ok {
				errs = append(errs, fmt.Errorf("template: secret needs a quoted source such as \"vault:secret/data/app\", got %s", cmd.Args[1]))
				return
			}
			src, err := ParseSource(lit.Text)
			if err != nil {
				errs = append(errs, fmt.Errorf("template: %w", err))
				return
			}
			if !seen[src] {
				seen[src] = true
				srcs = append(srcs, src)
			}
		})
	}
	if len(errs) > 0 {
		return nil, nil, errs[0]
	}
	if len(srcs) == 0 {
		return nil, nil, fmt.Errorf("template reads no secret: use {{ secret \"vault:path\" }}")
	}
	return t, srcs, nil
}

func walk(n parse.Node, f func(*parse.CommandNode)) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				walk(c, f)
			}
		}
	case *parse.ActionNode:
		walk(n.Pipe, f)
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				walk(c, f)
			}
		}
	case *parse.CommandNode:
		f(n)
		for _, a := range n.Args {
			walk(a, f)
		}
	case *parse.IfNode:
		walkBranch(&n.BranchNode, f)
	case *parse.RangeNode:
		walkBranch(&n.BranchNode, f)
	case *parse.WithNode:
		walkBranch(&n.BranchNode, f)
	case *parse.TemplateNode:
		walk(n.Pipe, f)
	}
}

func walkBranch(b *parse.BranchNode, f func(*parse.CommandNode)) {
	walk(b.Pipe, f)
	walk(b.List, f)
	walk(b.ElseList, f)
}
