package report

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Format is an output format.
type Format string

// Formats.
const (
	Text  Format = "text"
	JSON  Format = "json"
	SARIF Format = "sarif"
)

// ParseFormat checks a --format value.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case Text, JSON, SARIF:
		return f, nil
	}
	return "", fmt.Errorf("unknown format %q (want text, json or sarif)", s)
}

// Write renders r in format f. color enables ANSI colours in text.
func (r *Report) Write(w io.Writer, f Format, color bool) error {
	switch f {
	case JSON:
		return r.WriteJSON(w)
	case SARIF:
		return r.WriteSARIF(w)
	default:
		return r.WriteText(w, color)
	}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	out := *r
	if out.Findings == nil {
		out.Findings = []Finding{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// WriteText writes findings grouped by layer (config findings first), then problems and a
// summary line.
func (r *Report) WriteText(w io.Writer, color bool) error {
	c := func(code, s string) string {
		if !color {
			return s
		}
		return "\x1b[" + code + "m" + s + "\x1b[0m"
	}
	var b strings.Builder
	group := "\x00"
	for _, f := range r.Findings {
		g := f.Source
		if f.LayerIndex != nil {
			g = fmt.Sprintf("layer %d %s", *f.LayerIndex, short(f.LayerDigest))
			if f.CreatedBy != "" {
				g += "  " + truncate(f.CreatedBy, 80)
			}
		} else if f.Source == SourceConfig {
			g = "image config"
		}
		if g != group {
			group = g
			fmt.Fprintf(&b, "\n%s\n", c("1", g))
		}
		status := string(f.Status)
		switch f.Status {
		case Present:
			status = c("31", status)
		case Deleted, Overwritten:
			status = c("33", status)
		case Metadata:
			status = c("35", status)
		}
		loc := f.Path
		if f.Key != "" {
			loc += " " + f.Key
		}
		if f.Line > 0 {
			loc += fmt.Sprintf(":%d", f.Line)
		}
		fmt.Fprintf(&b, "  %-11s %s  %s  %s\n", status, c("36", f.Rule), loc, f.Secret)
		fmt.Fprintf(&b, "              %s\n", c("2", f.Fingerprint))
	}
	if len(r.Problems) > 0 {
		fmt.Fprintf(&b, "\n%s\n", c("1", "problems"))
		for _, p := range r.Problems {
			mark := "warning"
			if p.Incomplete {
				mark = c("31", "incomplete")
			}
			fmt.Fprintf(&b, "  %s: %s\n", mark, p.String())
		}
	}
	s := r.Stats
	fmt.Fprintf(&b, "\n%d finding(s) in %s: %d layer(s), %d file(s), %s scanned in %.1fs",
		len(r.Findings), r.Image, s.Layers, s.Files, humanBytes(s.Bytes), float64(s.DurationMS)/1000)
	if s.Ignored+s.Baseline > 0 {
		fmt.Fprintf(&b, " (%d ignored, %d in baseline)", s.Ignored, s.Baseline)
	}
	b.WriteString("\n")
	if r.Incomplete() {
		b.WriteString(c("31", "scan incomplete: see problems above") + "\n")
	}
	_, err := io.WriteString(w, strings.TrimPrefix(b.String(), "\n"))
	return err
}

func truncate(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
