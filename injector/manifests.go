package injector

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// ManifestResult describes one object InjectManifests looked at.
type ManifestResult struct {
	Document int // 1-based
	Kind     string
	Name     string
	Injected bool
	Warnings []string
}

// templatePaths says where each workload kind keeps its pod template.
var templatePaths = map[string][]string{
	"Deployment":            {"spec", "template"},
	"StatefulSet":           {"spec", "template"},
	"DaemonSet":             {"spec", "template"},
	"ReplicaSet":            {"spec", "template"},
	"ReplicationController": {"spec", "template"},
	"Job":                   {"spec", "template"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template"},
	"PodTemplate":           {"template"},
}

// InjectManifests runs Mutate over every pod and pod template in a stream of YAML documents
// (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and Lists of them)
// and writes the documents back, in order. Documents with nothing to inject are written as
// they came. An error names the document, the object and the annotation.
func InjectManifests(r io.Reader, w io.Writer, cfg *Config) ([]ManifestResult, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var (
		results []ManifestResult
		errs    []error
		out     [][]byte
	)
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return results, fmt.Errorf("read YAML document %d: %w", doc, err)
		}
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return results, fmt.Errorf("YAML document %d: %w", doc, err)
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue // empty document or comments only
		}
		var obj map[string]any
		if err := json.Unmarshal(js, &obj); err != nil {
			return results, fmt.Errorf("YAML document %d: want an object: %w", doc, err)
		}
		changed, err := injectObject(obj, cfg, doc, &results)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !changed {
			out = append(out, bytes.TrimRight(bytes.TrimPrefix(raw, []byte("---\n")), "\n"))
			continue
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return results, fmt.Errorf("YAML document %d: encode: %w", doc, err)
		}
		out = append(out, bytes.TrimRight(b, "\n"))
	}
	if len(errs) > 0 {
		return results, errors.Join(errs...)
	}
	for i, b := range out {
		if i > 0 {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return results, err
			}
		}
		if _, err := w.Write(append(b, '\n')); err != nil {
			return results, err
		}
	}
	return results, nil
}

// injectObject mutates obj in place and reports whether anything changed.
func injectObject(obj map[string]any, cfg *Config, doc int, results *[]ManifestResult) (bool, error) {
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	namespace, _ := meta["namespace"].(string)
	where := fmt.Sprintf("document %d (%s %s)", doc, kind, name)

	if items, ok := obj["items"].([]any); ok && strings.HasSuffix(kind, "List") {
		changed := false
		var errs []error
		for i, it := range items {
			m, ok := it.(map[string]any)
			if !ok {
				continue
			}
			c, err := injectObject(m, cfg, doc, results)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s item %d: %w", where, i, err))
			}
			changed = changed || c
		}
		return changed, errors.Join(errs...)
	}

	var tmpl map[string]any
	facts := Facts{}
	switch p, ok := templatePaths[kind]; {
	case kind == "Pod":
		tmpl = obj
	case ok:
		tmpl = lookupMap(obj, p...)
		if kind == "Job" || kind == "CronJob" {
			facts.OwnerKind = "Job"
		}
	}
	if tmpl == nil {
		return false, nil
	}
	var misplaced []string
	if kind != "Pod" {
		if ann, ok := meta["annotations"].(map[string]any); ok {
			for k := range ann {
				if strings.HasPrefix(k, prefix) {
					misplaced = append(misplaced, k)
				}
			}
		}
	}
	sort.Strings(misplaced)
	var pt corev1.PodTemplateSpec
	b, _ := json.Marshal(map[string]any{"metadata": tmpl["metadata"], "spec": tmpl["spec"]})
	if err := json.Unmarshal(b, &pt); err != nil {
		return false, fmt.Errorf("%s: pod template: %w", where, err)
	}
	pod := &corev1.Pod{ObjectMeta: pt.ObjectMeta, Spec: pt.Spec}
	if pod.Namespace == "" {
		pod.Namespace = namespace
	}
	res, err := Mutate(pod, cfg, facts)
	if err != nil {
		return false, fmt.Errorf("%s: %w", where, err)
	}
	if len(misplaced) > 0 {
		// The webhook only sees pods: annotations on the workload itself do nothing.
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s on the %s's own metadata are ignored; move them to %s.metadata.annotations",
			strings.Join(misplaced, ", "), kind, strings.Join(templatePaths[kind], ".")))
	}
	*results = append(*results, ManifestResult{Document: doc, Kind: kind, Name: name, Injected: res.Injected, Warnings: res.Warnings})
	if !res.Injected {
		return false, nil
	}
	res.Pod.Namespace = pt.Namespace
	var mm, sm map[string]any
	if err := remarshal(res.Pod.ObjectMeta, &mm); err != nil {
		return false, err
	}
	if err := remarshal(res.Pod.Spec, &sm); err != nil {
		return false, err
	}
	delete(mm, "creationTimestamp") // a zero time marshals as null
	pruneEmptyResources(sm)
	tmpl["metadata"], tmpl["spec"] = mm, sm
	return true, nil
}

func lookupMap(m map[string]any, path ...string) map[string]any {
	for _, p := range path {
		next, ok := m[p].(map[string]any)
		if !ok {
			return nil
		}
		m = next
	}
	return m
}

func remarshal(in any, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// pruneEmptyResources drops the "resources: {}" that encoding a typed container adds.
func pruneEmptyResources(spec map[string]any) {
	for _, key := range []string{"initContainers", "containers"} {
		cs, _ := spec[key].([]any)
		for _, c := range cs {
			if cm, ok := c.(map[string]any); ok {
				if r, ok := cm["resources"].(map[string]any); ok && len(r) == 0 {
					delete(cm, "resources")
				}
			}
		}
	}
}
