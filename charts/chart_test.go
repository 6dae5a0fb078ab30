// Package charts holds sidekey's Helm chart (charts/sidekey) and its tests: helm lint, golden
// `helm template` output for several value sets, every rendered object applied with server-side
// dry-run to a real kube-apiserver, a real `helm install`, and values.schema.json rejections.
package charts

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/sidekey/sidekey/charts/apply"
	"github.com/sidekey/sidekey/injector"
	"github.com/sidekey/sidekey/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

const (
	chartDir    = "sidekey"
	release     = "sidekey"
	namespace   = "sidekey-system"
	kubeVersion = "1.37.2"
)

// cases are the value sets rendered: testdata/<name>.values.yaml -> testdata/<name>.golden.yaml.
// "default" has no values file.
var cases = []string{"default", "full", "hostnetwork-url", "certmanager-issuer"}

// crdKinds are rendered only when a value asks for them and are served only with their CRDs,
// which the dry-run installs from testdata/crds.
var crdKinds = map[string]bool{"ServiceMonitor": true, "PodMonitor": true, "Issuer": true, "Certificate": true}

func valuesFile(name string) string {
	if name == "default" {
		return ""
	}
	return filepath.Join("testdata", name+".values.yaml")
}

// helm runs the real helm binary with its state in a temporary HOME.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(testenv.Bin(t, "helm"), args...)
	cmd.Env = append(os.Environ(), "HOME="+home, "HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"), "HELM_DATA_HOME="+filepath.Join(home, "data"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func render(t *testing.T, name string, extra ...string) string {
	t.Helper()
	args := []string{"template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion}
	if f := valuesFile(name); f != "" {
		args = append(args, "-f", f)
	}
	out, err := helm(t, append(args, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLint(t *testing.T) {
	for _, name := range cases {
		t.Run(name, func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir, "--namespace", namespace, "--kube-version", kubeVersion}
			if f := valuesFile(name); f != "" {
				args = append(args, "-f", f)
			}
			if out, err := helm(t, args...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

func TestTemplateGolden(t *testing.T) {
	for _, name := range cases {
		t.Run(name, func(t *testing.T) {
			got := render(t, name)
			golden := filepath.Join("testdata", name+".golden.yaml")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./charts -update)", err)
			}
			if d := cmp.Diff(string(want), got); d != "" {
				t.Errorf("helm template %s (-want +got):\n%s", name, d)
			}
		})
	}
}

// TestRenderedInvariants checks what must hold for every value set, beyond the golden text.
func TestRenderedInvariants(t *testing.T) {
	for _, name := range cases {
		t.Run(name, func(t *testing.T) {
			objs, err := apply.Objects([]byte(render(t, name)))
			if err != nil {
				t.Fatal(err)
			}
			kinds := map[string]int{}
			for _, o := range objs {
				kinds[o.GetKind()]++
				switch o.GetKind() {
				case "Deployment", "DaemonSet":
					checkPodSecurity(t, o)
				case "MutatingWebhookConfiguration":
					checkWebhookConfig(t, o)
				}
			}
			for _, k := range []string{"Deployment", "Service", "MutatingWebhookConfiguration", "ClusterRole", "ServiceAccount"} {
				if kinds[k] == 0 {
					t.Errorf("no %s rendered", k)
				}
			}
		})
	}
}

func checkPodSecurity(t *testing.T, o *unstructured.Unstructured) {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	for _, c := range cs {
		c := c.(map[string]any)
		sc, _ := c["securityContext"].(map[string]any)
		if sc["readOnlyRootFilesystem"] != true {
			t.Errorf("%s container %s: readOnlyRootFilesystem = %v; want true", o.GetName(), c["name"], sc["readOnlyRootFilesystem"])
		}
		drop, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "drop")
		if !slices.Equal(drop, []string{"ALL"}) {
			t.Errorf("%s container %s: capabilities.drop = %v; want [ALL]", o.GetName(), c["name"], drop)
		}
		if o.GetKind() == "Deployment" {
			if sc["allowPrivilegeEscalation"] != false || sc["runAsNonRoot"] != true {
				t.Errorf("%s container %s: want allowPrivilegeEscalation false and runAsNonRoot true, got %v", o.GetName(), c["name"], sc)
			}
			if add, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "add"); len(add) > 0 {
				t.Errorf("%s container %s adds capabilities %v", o.GetName(), c["name"], add)
			}
		}
	}
}

func checkWebhookConfig(t *testing.T, o *unstructured.Unstructured) {
	t.Helper()
	hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
	if len(hooks) != 1 {
		t.Fatalf("webhooks: %d; want 1", len(hooks))
	}
	h := hooks[0].(map[string]any)
	for k, want := range map[string]any{"sideEffects": "None", "reinvocationPolicy": "IfNeeded"} {
		if h[k] != want {
			t.Errorf("webhook %s = %v; want %v", k, h[k], want)
		}
	}
	if ts, _ := h["timeoutSeconds"].(float64); ts < 1 || ts > 10 {
		if ti, ok := h["timeoutSeconds"].(int64); !ok || ti < 1 || ti > 10 {
			t.Errorf("webhook timeoutSeconds = %v; want a few seconds", h["timeoutSeconds"])
		}
	}
	conds, _ := h["matchConditions"].([]any)
	if len(conds) != 1 || conds[0].(map[string]any)["expression"] != injector.MatchConditionExpression {
		t.Errorf("matchConditions = %v; want one with injector.MatchConditionExpression %q", conds, injector.MatchConditionExpression)
	}
	exprs, _, _ := unstructured.NestedSlice(h, "namespaceSelector", "matchExpressions")
	var excluded []string
	for _, e := range exprs {
		e := e.(map[string]any)
		if e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn" {
			for _, v := range e["values"].([]any) {
				excluded = append(excluded, v.(string))
			}
		}
	}
	for _, ns := range []string{"kube-system", namespace} {
		if !slices.Contains(excluded, ns) {
			t.Errorf("namespaceSelector excludes %v; want %s among them", excluded, ns)
		}
	}
}

// TestServerDryRun applies every object of every value set to a real kube-apiserver with
// server-side dry-run, then installs the default chart for real with helm.
func TestServerDryRun(t *testing.T) {
	cfg := testenv.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := apply.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace",
		"metadata": map[string]any{"name": namespace}}}
	if err := c.Apply(ctx, "", ns); err != nil {
		t.Fatal(err)
	}
	crds := installCRDs(ctx, t, c)
	for _, name := range cases {
		t.Run(name, func(t *testing.T) {
			objs, err := apply.Objects([]byte(render(t, name)))
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				if crdKinds[o.GetKind()] && !crds[o.GetKind()] {
					t.Errorf("%s %s: no CRD in testdata/crds", o.GetKind(), o.GetName())
				}
			}
			if err := c.DryRun(ctx, namespace, objs...); err != nil {
				t.Errorf("server-side dry-run refused:\n%v", err)
			}
		})
	}
	// The dry-run is a real check: the API server refuses what it would refuse on install.
	t.Run("refuses broken objects", func(t *testing.T) {
		objs, err := apply.Objects([]byte(render(t, "default")))
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			switch o.GetKind() {
			case "MutatingWebhookConfiguration":
				hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
				hooks[0].(map[string]any)["matchConditions"] = []any{map[string]any{"name": "bad", "expression": "object.metadata.("}}
				_ = unstructured.SetNestedSlice(o.Object, hooks, "webhooks")
			case "Deployment":
				_ = unstructured.SetNestedField(o.Object, int64(-1), "spec", "replicas")
			default:
				continue
			}
			if err := c.DryRun(ctx, namespace, o); err == nil {
				t.Errorf("%s with a broken field: dry-run accepted it", o.GetKind())
			}
		}
	})
	t.Run("helm install", func(t *testing.T) {
		kc := testenv.Kubeconfig(t, cfg)
		if out, err := helm(t, "install", release, chartDir, "--kubeconfig", kc, "--namespace", "sidekey-install", "--create-namespace"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		out, err := helm(t, "get", "manifest", release, "--kubeconfig", kc, "--namespace", "sidekey-install")
		if err != nil || !strings.Contains(out, "kind: MutatingWebhookConfiguration") {
			t.Fatalf("helm get manifest = %q, %v; want the installed objects", out, err)
		}
		if out, err := helm(t, "uninstall", release, "--kubeconfig", kc, "--namespace", "sidekey-install"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	})
}

// installCRDs installs the minimal CRDs of testdata/crds (cert-manager, Prometheus Operator)
// and returns the kinds they serve, once the API server serves them.
func installCRDs(ctx context.Context, t *testing.T, c *apply.Client) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("testdata/crds: %v (%d files)", err, len(files))
	}
	var gvks []schema.GroupVersionKind
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := apply.Objects(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := c.Apply(ctx, "", objs...); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, o := range objs {
			group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
			kind, _, _ := unstructured.NestedString(o.Object, "spec", "names", "kind")
			versions, _, _ := unstructured.NestedSlice(o.Object, "spec", "versions")
			for _, v := range versions {
				gvks = append(gvks, schema.GroupVersionKind{Group: group, Kind: kind, Version: v.(map[string]any)["name"].(string)})
			}
		}
	}
	kinds := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for _, gvk := range gvks {
		for !c.Serves(gvk) {
			if time.Now().After(deadline) {
				t.Fatalf("CRD of %s not served after 30s", gvk)
			}
			time.Sleep(200 * time.Millisecond)
			c.Reset()
		}
		kinds[gvk.Kind] = true
	}
	return kinds
}

// TestSchemaRejects runs helm with wrong values: values.schema.json must refuse each, naming the key.
func TestSchemaRejects(t *testing.T) {
	tests := []struct {
		set, want string
	}{
		{"webhook.replicas=notanumber", "replicas"},
		{"webhook.failurePolicy=Sometimes", "failurePolicy"},
		{"webhook.timeoutSeconds=60", "timeoutSeconds"},
		{"webhook.tls.mode=manual", "mode"},
		{"webhook.url=http://insecure:8443/mutate", "url"},
		{"webhok.replicas=2", "webhok"},
		{"probe.enabled=yes", "enabled"},
		{"probe.seccompProfile=Localhost", "seccompProfile"},
		{"agent.nativeSidecars=maybe", "nativeSidecars"},
		{"image.digest=sha256:abc", "digest"},
	}
	for _, tt := range tests {
		t.Run(tt.set, func(t *testing.T) {
			out, err := helm(t, "template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion, "--set", tt.set)
			if err == nil {
				t.Fatalf("helm template --set %s succeeded; want a schema error\n%.300s", tt.set, out)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("helm template --set %s: %v; want a schema error naming %s", tt.set, err, tt.want)
			}
		})
	}
	// The same refusal at `helm install`, before anything reaches a cluster.
	t.Run("install", func(t *testing.T) {
		_, err := helm(t, "install", release, chartDir, "--dry-run=client", "--namespace", namespace, "--kube-version", kubeVersion, "--set", "webhook.replicas=notanumber")
		if err == nil || !strings.Contains(err.Error(), "replicas") {
			t.Errorf("helm install --set webhook.replicas=notanumber: %v; want a schema error", err)
		}
	})
}

// TestValuesDocumented keeps values.yaml self-describing: every key is documented (Values
// fails otherwise), and the keys the README promises exist.
func TestValuesDocumented(t *testing.T) {
	vals := chartValues(t)
	keys := map[string]bool{}
	for _, v := range vals {
		keys[v.Key] = true
	}
	for _, k := range []string{"webhook.replicas", "probe.enabled", "probe.allowEnforce", "certManager.enabled", "webhook.hostNetwork", "webhook.url"} {
		if !keys[k] {
			t.Errorf("values.yaml has no documented %s", k)
		}
	}
}

// chartValues parses the chart's values.yaml with its documentation comments.
func chartValues(t *testing.T) []Value {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	vals, err := Values(b)
	if err != nil {
		t.Fatal(err)
	}
	return vals
}
