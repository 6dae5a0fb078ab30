// Package examples holds the user-facing examples and the tests that keep them working: every
// Kubernetes example is injected the way `sidekey inject` does (injector.InjectManifests) and
// accepted, before and after, by a real kube-apiserver with server-side dry-run.
package examples

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/sidekey/sidekey/charts/apply"
	"github.com/sidekey/sidekey/injector"
	"github.com/sidekey/sidekey/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// manifests are the Kubernetes examples, by directory, and what each must show once injected.
var manifests = []struct {
	dir   string
	check func(t *testing.T, objs []*unstructured.Unstructured)
}{
	{"vault-kv", nil},
	{"vault-database", func(t *testing.T, objs []*unstructured.Unstructured) {
		wantAnnotation(t, objs, "sidekey.io/on-change", "http://localhost:8080/-/reload")
	}},
	{"job-init-only", func(t *testing.T, objs []*unstructured.Unstructured) {
		// init-only: the agent runs once, as a plain init container; no sidecar outlives the Job.
		pod := podSpec(t, objs, "Job")
		if names := containerNames(pod, "containers"); slices.ContainsFunc(names, isAgent) {
			t.Errorf("Job containers %v: want no agent sidecar", names)
		}
		for _, c := range slice(pod, "initContainers") {
			if isAgent(str(c, "name")) && str(c, "restartPolicy") == "Always" {
				t.Errorf("Job agent init container has restartPolicy Always; want a run-once init container")
			}
		}
	}},
	{"rotation", func(t *testing.T, objs []*unstructured.Unstructured) {
		if pod := podSpec(t, objs, "Deployment"); pod["shareProcessNamespace"] != true {
			t.Errorf("shareProcessNamespace = %v; want true for on-change signal", pod["shareProcessNamespace"])
		}
	}},
	{"aws-irsa", func(t *testing.T, objs []*unstructured.Unstructured) {
		pod := podSpec(t, objs, "Deployment")
		if !slices.ContainsFunc(slice(pod, "volumes"), func(v map[string]any) bool { return str(v, "name") == injector.AWSTokenVolume }) {
			t.Errorf("no %s volume: want the projected web-identity token", injector.AWSTokenVolume)
		}
	}},
	{"probe-policy", func(t *testing.T, objs []*unstructured.Unstructured) {
		wantAnnotation(t, objs, "sidekey.io/probe", "enforce")
		wantAnnotation(t, objs, "sidekey.io/allowed-readers", "/app/server")
	}},
}

// injectConfig is what the chart passes the webhook, with a fixed agent image so the golden
// files do not depend on the build's version.
func injectConfig() *injector.Config {
	cfg := injector.DefaultConfig()
	cfg.AgentImage = "ghcr.io/sidekey/sidekey-agent:0.1.0"
	cfg.VaultAddr = "https://vault.vault.svc:8200"
	return &cfg
}

func exampleFile(t *testing.T, dir string) string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) != 1 {
		t.Fatalf("%s: want one manifest file, found %v (%v)", dir, files, err)
	}
	return files[0]
}

// inject runs the offline injection of `sidekey inject -f FILE` and checks every pod template
// of the example was injected.
func inject(t *testing.T, file string) []byte {
	t.Helper()
	in, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	results, err := injector.InjectManifests(bytes.NewReader(in), &out, injectConfig())
	if err != nil {
		t.Fatalf("inject %s: %v", file, err)
	}
	if len(results) == 0 {
		t.Fatalf("inject %s: no pod templates found", file)
	}
	for _, r := range results {
		if !r.Injected {
			t.Errorf("%s: %s %s not injected", file, r.Kind, r.Name)
		}
		if len(r.Warnings) > 0 {
			t.Errorf("%s: %s %s: warnings %q; an example should be clean", file, r.Kind, r.Name, r.Warnings)
		}
	}
	return out.Bytes()
}

func TestInjectGolden(t *testing.T) {
	for _, m := range manifests {
		t.Run(m.dir, func(t *testing.T) {
			got := inject(t, exampleFile(t, m.dir))
			golden := filepath.Join("testdata", m.dir+".injected.yaml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			} else {
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run go test ./examples -update)", err)
				}
				if d := cmp.Diff(string(want), string(got)); d != "" {
					t.Errorf("injected %s (-want +got):\n%s", m.dir, d)
				}
			}
			objs, err := apply.Objects(got)
			if err != nil {
				t.Fatal(err)
			}
			if m.check != nil {
				m.check(t, objs)
			}
		})
	}
}

// TestServerDryRun sends every example, as written and as injected, to a real kube-apiserver.
func TestServerDryRun(t *testing.T) {
	cfg := testenv.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := apply.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "sidekey-examples"
	if err := c.Apply(ctx, "", &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}); err != nil {
		t.Fatal(err)
	}
	for _, m := range manifests {
		t.Run(m.dir, func(t *testing.T) {
			file := exampleFile(t, m.dir)
			orig, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			for name, b := range map[string][]byte{"as written": orig, "injected": inject(t, file)} {
				objs, err := apply.Objects(b)
				if err != nil {
					t.Fatal(err)
				}
				if err := c.DryRun(ctx, ns, objs...); err != nil {
					t.Errorf("%s, %s: the API server refused:\n%v", file, name, err)
				}
			}
		})
	}
}

func wantAnnotation(t *testing.T, objs []*unstructured.Unstructured, key, want string) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			got, _, _ := unstructured.NestedString(o.Object, "spec", "template", "metadata", "annotations", key)
			if got != want {
				t.Errorf("%s annotation %s = %q; want %q", o.GetName(), key, got, want)
			}
			return
		}
	}
	t.Errorf("no Deployment")
}

func podSpec(t *testing.T, objs []*unstructured.Unstructured, kind string) map[string]any {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind {
			spec, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
			return spec
		}
	}
	t.Fatalf("no %s", kind)
	return nil
}

func slice(m map[string]any, key string) []map[string]any {
	var out []map[string]any
	l, _ := m[key].([]any)
	for _, x := range l {
		if mm, ok := x.(map[string]any); ok {
			out = append(out, mm)
		}
	}
	return out
}

func str(m map[string]any, key string) string { s, _ := m[key].(string); return s }

func containerNames(pod map[string]any, key string) []string {
	var names []string
	for _, c := range slice(pod, key) {
		names = append(names, str(c, "name"))
	}
	return names
}

func isAgent(name string) bool { return strings.HasPrefix(name, "sidekey-agent") }
