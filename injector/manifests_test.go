package injector

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestInjectManifestsGolden(t *testing.T) {
	in, err := os.ReadFile("testdata/workloads.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	var out bytes.Buffer
	results, err := InjectManifests(bytes.NewReader(in), &out, &cfg)
	if err != nil {
		t.Fatalf("InjectManifests: %v", err)
	}
	const golden = "testdata/workloads.golden.yaml"
	if *update {
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(want), out.String()); d != "" {
		t.Errorf("InjectManifests(testdata/workloads.yaml) (-want +got):\n%s", d)
	}
	var got []string
	for _, r := range results {
		got = append(got, r.Kind+"/"+r.Name+map[bool]string{true: "+", false: "-"}[r.Injected])
	}
	wantRes := []string{"Deployment/web+", "CronJob/nightly+", "StatefulSet/db+", "DaemonSet/agent-", "Job/migrate+"}
	if d := cmp.Diff(wantRes, got); d != "" {
		t.Errorf("results (-want +got):\n%s", d)
	}
	// The Service went through byte for byte, comment included.
	if !strings.HasPrefix(out.String(), "# Unannotated objects come out as they went in, comments and all.\napiVersion: v1\nkind: Service") {
		t.Errorf("unannotated document was rewritten:\n%s", out.String()[:200])
	}
	// Jobs and CronJobs are init-only; the Deployment is a native sidecar.
	for _, doc := range strings.Split(out.String(), "\n---\n") {
		switch {
		case strings.Contains(doc, "kind: Job\n"), strings.Contains(doc, "kind: CronJob\n"):
			if !strings.Contains(doc, `\"mode\":\"init-only\"`) && !strings.Contains(doc, `"mode":"init-only"`) {
				t.Errorf("Job document is not init-only:\n%s", doc)
			}
		}
	}
	// Injecting the output again changes nothing.
	var again bytes.Buffer
	res2, err := InjectManifests(bytes.NewReader(out.Bytes()), &again, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res2 {
		if r.Injected {
			t.Errorf("second pass injected %s/%s again", r.Kind, r.Name)
		}
	}
	if d := cmp.Diff(out.String(), again.String()); d != "" {
		t.Errorf("second pass changed the output (-first +second):\n%s", d)
	}
}

func TestInjectManifestsMisplacedAnnotations(t *testing.T) {
	in := `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations: {sidekey.io/inject: "true", sidekey.io/secret.db: "vault:database/creds/web"}
spec:
  template:
    spec:
      containers: [{name: app, image: x}]
`
	cfg := testConfig()
	var out bytes.Buffer
	res, err := InjectManifests(strings.NewReader(in), &out, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := "sidekey.io/inject, sidekey.io/secret.db on the Deployment's own metadata are ignored; move them to spec.template.metadata.annotations"
	if len(res) != 1 || res[0].Injected || len(res[0].Warnings) != 1 || res[0].Warnings[0] != want {
		t.Errorf("results %+v; want one uninjected object warning %q", res, want)
	}
}

func TestInjectManifestsErrors(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"typo in a deployment", `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata:
      annotations: {sidekey.io/inject: "true", sidekey.io/secret.db: "vault:x", sidekey.io/vault-rol: web}
    spec:
      containers: [{name: app, image: x}]
`, []string{"document 1 (Deployment web)", "sidekey.io/vault-rol: unknown sidekey annotation; did you mean sidekey.io/vault-role?"}},
		{"second document of a list", `apiVersion: v1
kind: Pod
metadata: {name: ok}
spec: {containers: [{name: a, image: x}]}
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata: {name: rs}
  spec:
    template:
      metadata: {annotations: {sidekey.io/inject: "true", sidekey.io/secret.db: "nope"}}
      spec: {containers: [{name: a, image: x}]}
`, []string{"document 2 (List ) item 0", "document 2 (ReplicaSet rs)", "sidekey.io/secret.db:"}},
		{"not YAML", "a: [b\n", []string{"document 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			var out bytes.Buffer
			_, err := InjectManifests(strings.NewReader(tt.in), &out, &cfg)
			if err == nil {
				t.Fatalf("InjectManifests succeeded; want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q; want it to contain %q", err, w)
				}
			}
			if out.Len() != 0 {
				t.Errorf("wrote %d bytes despite the error", out.Len())
			}
		})
	}
}

func FuzzInjectManifests(f *testing.F) {
	if b, err := os.ReadFile("testdata/workloads.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("kind: List\nitems: [{kind: Pod, metadata: {annotations: {sidekey.io/inject: 'true'}}}]\n"))
	f.Add([]byte("---\n---\nkind: CronJob\nspec: {jobTemplate: {spec: {template: 3}}}\n"))
	cfg := testConfig()
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		res, err := InjectManifests(bytes.NewReader(in), &out, &cfg)
		if err != nil {
			return
		}
		injected := false
		for _, r := range res {
			injected = injected || r.Injected
		}
		if !injected {
			return
		}
		// What came out injects nothing more.
		var again bytes.Buffer
		res2, err := InjectManifests(bytes.NewReader(out.Bytes()), &again, &cfg)
		if err != nil {
			t.Fatalf("second pass over our own output: %v", err)
		}
		for _, r := range res2 {
			if r.Injected {
				t.Fatalf("second pass injected %s %s again", r.Kind, r.Name)
			}
		}
	})
}
