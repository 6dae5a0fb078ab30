package report

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/sidekey/sidekey/internal/version"
)

// SARIF 2.1.0, the subset GitHub code scanning reads.
type sarifLog struct {
	Schema  string     `json:"$schema"`
	Version string     `json:"version"`
	Runs    []sarifRun `json:"runs"`
}

type sarifRun struct {
	Tool    sarifTool     `json:"tool"`
	Results []sarifResult `json:"results"`
}

type sarifTool struct {
	Driver sarifDriver `json:"driver"`
}

type sarifDriver struct {
	Name           string      `json:"name"`
	InformationURI string      `json:"informationUri"`
	Version        string      `json:"version,omitempty"`
	Rules          []sarifRule `json:"rules"`
}

type sarifRule struct {
	ID               string       `json:"id"`
	Name             string       `json:"name"`
	ShortDescription sarifMessage `json:"shortDescription"`
}

type sarifMessage struct {
	Text string `json:"text"`
}

type sarifResult struct {
	RuleID              string            `json:"ruleId"`
	RuleIndex           int               `json:"ruleIndex"`
	Level               string            `json:"level"`
	Message             sarifMessage      `json:"message"`
	Locations           []sarifLocation   `json:"locations"`
	PartialFingerprints map[string]string `json:"partialFingerprints"`
	Properties          map[string]any    `json:"properties,omitempty"`
}

type sarifLocation struct {
	PhysicalLocation sarifPhysical `json:"physicalLocation"`
}

type sarifPhysical struct {
	ArtifactLocation sarifArtifact `json:"artifactLocation"`
	Region           *sarifRegion  `json:"region,omitempty"`
}

type sarifArtifact struct {
	URI string `json:"uri"`
}

type sarifRegion struct {
	StartLine int `json:"startLine"`
}

// WriteSARIF writes the report as a SARIF 2.1.0 log with one run.
func (r *Report) WriteSARIF(w io.Writer) error {
	var ids []string
	desc := map[string]string{}
	for _, f := range r.Findings {
		if _, ok := desc[f.Rule]; !ok {
			ids = append(ids, f.Rule)
			desc[f.Rule] = f.Description
		}
	}
	slices.Sort(ids)
	run := sarifRun{
		Tool: sarifTool{Driver: sarifDriver{
			Name:           "sidekey",
			InformationURI: "https://github.com/sidekey/sidekey",
			Version:        version.String(),
			Rules:          []sarifRule{},
		}},
		Results: []sarifResult{},
	}
	index := map[string]int{}
	for i, id := range ids {
		index[id] = i
		run.Tool.Driver.Rules = append(run.Tool.Driver.Rules, sarifRule{ID: id, Name: id, ShortDescription: sarifMessage{Text: desc[id]}})
	}
	for _, f := range r.Findings {
		where := f.Path
		if f.LayerIndex != nil {
			where = fmt.Sprintf("%s in layer %d (%s, %s)", f.Path, *f.LayerIndex, f.LayerDigest, f.Status)
		} else if f.Source == SourceConfig {
			where = fmt.Sprintf("image config %s %s", f.Path, f.Key)
		}
		res := sarifResult{
			RuleID:    f.Rule,
			RuleIndex: index[f.Rule],
			Level:     "error",
			Message:   sarifMessage{Text: fmt.Sprintf("%s: %s at %s", f.Description, f.Secret, where)},
			Locations: []sarifLocation{{PhysicalLocation: sarifPhysical{
				ArtifactLocation: sarifArtifact{URI: sarifURI(f)},
			}}},
			PartialFingerprints: map[string]string{"sidekey/v1": f.Fingerprint},
			Properties:          map[string]any{"status": f.Status, "source": f.Source},
		}
		if f.Line > 0 {
			res.Locations[0].PhysicalLocation.Region = &sarifRegion{StartLine: f.Line}
		}
		if f.LayerIndex != nil {
			res.Properties["layer_index"] = *f.LayerIndex
			res.Properties["layer_digest"] = f.LayerDigest
		}
		run.Results = append(run.Results, res)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(sarifLog{
		Schema:  "https://json.schemastore.org/sarif-2.1.0.json",
		Version: "2.1.0",
		Runs:    []sarifRun{run},
	})
}

// sarifURI is a relative URI for the finding: the file path without its leading slash (and
// without the nested part after '!'), or the config section.
func sarifURI(f Finding) string {
	p := f.Path
	if f.Source == SourceConfig {
		return "image-config/" + p
	}
	if i := strings.IndexByte(p, '!'); i >= 0 {
		p = p[:i]
	}
	return strings.TrimPrefix(p, "/")
}
