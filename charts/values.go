package charts

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// Value is one documented key of a chart's values.yaml.
type Value struct {
	Key         string // dotted path, e.g. webhook.replicas
	Type        string // string, int, bool, list, map
	Default     string // JSON of the default
	Description string
}

// Values reads a values.yaml whose keys are documented helm-docs style: a comment block starting
// with "# --" right above the key. A documented key is one row, whatever its value (a map such
// as resources is shown whole); an undocumented map is descended into; an undocumented leaf is an
// error naming its line, so the reference cannot silently miss a value.
func Values(valuesYAML []byte) ([]Value, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(valuesYAML, &doc); err != nil {
		return nil, fmt.Errorf("parse values.yaml: %w", err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("values.yaml: want a map at the top")
	}
	var (
		out  []Value
		errs []error
	)
	var walk func(prefix string, m *yaml.Node)
	walk = func(prefix string, m *yaml.Node) {
		for i := 0; i+1 < len(m.Content); i += 2 {
			k, v := m.Content[i], m.Content[i+1]
			key := prefix + k.Value
			desc, ok := description(k.HeadComment)
			if !ok {
				if v.Kind == yaml.MappingNode && len(v.Content) > 0 {
					walk(key+".", v)
					continue
				}
				errs = append(errs, fmt.Errorf("values.yaml:%d: %s has no \"# --\" comment above it", k.Line, key))
				continue
			}
			if desc == "" {
				errs = append(errs, fmt.Errorf("values.yaml:%d: %s: empty \"# --\" comment", k.Line, key))
				continue
			}
			def, typ, err := defaultOf(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("values.yaml:%d: %s: %w", k.Line, key, err))
				continue
			}
			out = append(out, Value{Key: key, Type: typ, Default: def, Description: desc})
		}
	}
	walk("", doc.Content[0])
	return out, errors.Join(errs...)
}

// description returns the text of the last "# --" block of a head comment.
func description(head string) (string, bool) {
	lines := strings.Split(head, "\n")
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "# --") {
			start = i
		}
	}
	if start < 0 {
		return "", false
	}
	var parts []string
	for i, l := range lines[start:] {
		l = strings.TrimSpace(l)
		if i == 0 {
			l = strings.TrimPrefix(l, "# --")
		} else {
			l = strings.TrimPrefix(l, "#")
		}
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " "), true
}

func defaultOf(v *yaml.Node) (def, typ string, err error) {
	var x any
	if err := v.Decode(&x); err != nil {
		return "", "", err
	}
	switch x.(type) {
	case string:
		typ = "string"
	case int, int64, uint64:
		typ = "int"
	case float64:
		typ = "number"
	case bool:
		typ = "bool"
	case []any:
		typ = "list"
	case map[string]any:
		typ = "map"
	case nil:
		typ = "null"
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(x); err != nil {
		return "", "", err
	}
	return strings.TrimSpace(b.String()), typ, nil
}
