package injector

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	gomodules "gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// checkPodPatch checks podPatch on one pod against the diff of the whole pods, and against the
// patched result.
func checkPodPatch(t *testing.T, name string, pod *corev1.Pod, cfg *Config, facts Facts) {
	t.Helper()
	res, err := Mutate(pod, cfg, facts)
	if err != nil || !res.Injected {
		return
	}
	before, after := mustJSON(t, pod), mustJSON(t, res.Pod)
	full, err := gomodules.CreatePatch(before, after)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := podPatch(pod.DeepCopy(), res.Pod.DeepCopy(), &byteCache[[]byte]{})
	if err != nil || !resp.Allowed {
		t.Fatalf("%s: podPatch = %+v, %v", name, resp.Result, err)
	}
	var pruned []gomodules.Operation
	if err := json.Unmarshal(resp.Patch, &pruned); err != nil {
		t.Fatalf("%s: patch %s: %v", name, resp.Patch, err)
	}
	if d := cmp.Diff(opStrings(t, full), opStrings(t, pruned)); d != "" {
		t.Errorf("%s: pruned diff differs from the whole-pod diff (-whole +pruned):\n%s", name, d)
	}
	if got := applyPatch(t, resp.Patch, before); !jsonEqual(t, got, after) {
		t.Errorf("%s: patched pod\n%s\nwant\n%s", name, got, after)
	}
}

// TestPodPatchPruned: pruning equal parts must not change what the diff finds, on every test pod.
func TestPodPatchPruned(t *testing.T) {
	cfg := testConfig()
	files, _ := filepath.Glob("testdata/*.pod.yaml")
	if len(files) < 10 {
		t.Fatalf("only %d test pods", len(files))
	}
	facts := Facts{ServiceAccountRoleARN: "arn:aws:iam::123456789012:role/x"}
	for _, f := range files {
		checkPodPatch(t, f, podFromFile(t, f), &cfg, facts)
	}
	// Containers and volumes the pod already has, before and around ours.
	pod := podFromFile(t, "testdata/basic.pod.yaml")
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "m"}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "data"}}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}, {Name: "old", MountPath: "/run/secrets/sidekey"}}
	pod.Labels = map[string]string{"app": "web"}
	checkPodPatch(t, "existing parts", pod, &cfg, facts)
}

// A field this build's corev1 does not know (a newer API server) survives the patch.
func TestPodPatchKeepsUnknownFields(t *testing.T) {
	cfg := testConfig()
	raw := mustJSON(t, podFromFile(t, "testdata/basic.pod.yaml"))
	raw = []byte(strings.Replace(string(raw), `"spec":{`, `"spec":{"futureField":{"a":1},`, 1))
	raw = []byte(strings.Replace(string(raw), `"name":"app",`, `"name":"app","futureContainerField":true,`, 1))
	var pod corev1.Pod
	if err := json.Unmarshal(raw, &pod); err != nil {
		t.Fatal(err)
	}
	res, err := Mutate(&pod, &cfg, Facts{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := podPatch(&pod, res.Pod, &byteCache[[]byte]{})
	if err != nil {
		t.Fatal(err)
	}
	got := applyPatch(t, resp.Patch, raw)
	for _, field := range []string{`"futureField":{"a":1}`, `"futureContainerField":true`} {
		if !strings.Contains(string(got), field) {
			t.Errorf("patch dropped %s:\n%s", field, resp.Patch)
		}
	}
}

func FuzzPodPatch(f *testing.F) {
	f.Add("sidekey.io/secret.db", "vault:database/creds/app", "sidekey.io/on-change", "signal:app:HUP")
	f.Add("sidekey.io/mount-path", "/data", "sidekey.io/mode", "init-only")
	f.Add("sidekey.io/containers", "logs,metrics", "sidekey.io/tmpfs-size", "1Mi")
	f.Add("other", "x", "sidekey.io/status", "injected")
	cfg := testConfig()
	base := podFromFile(f, "testdata/basic.pod.yaml")
	base.Spec.Containers[1].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	base.Spec.Volumes = []corev1.Volume{{Name: "data"}}
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		pod := base.DeepCopy()
		pod.Annotations[k1], pod.Annotations[k2] = v1, v2
		checkPodPatch(t, "fuzzed pod", pod, &cfg, Facts{})
	})
}

func TestAppendPatch(t *testing.T) {
	ops := []gomodules.Operation{
		{Operation: "add", Path: "/metadata/annotations/sidekey.io~1status", Value: "injected"},
		{Operation: "remove", Path: "/spec/containers/2"},
		{Operation: "replace", Path: "/spec/x", Value: nil},
		{Operation: "add", Path: "/spec/y", Value: map[string]any{"a": []any{1.0, -2.5, 1e21, 1e-7, true, false, nil}, "b": map[string]any{}}},
		{Operation: "add", Path: "/s", Value: "quote\" back\\ <html> & \n\t\r\b\f \x01 \u2028 \u2029 é \xff"},
	}
	got := appendPatch(nil, ops)
	want, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(t, got, want) {
		t.Errorf("appendPatch\n%s\nwant\n%s", got, want)
	}
	// Without maps of several keys the bytes match encoding/json's too.
	flat := slices.Delete(slices.Clone(ops), 3, 4)
	got, want = appendPatch(nil, flat), mustJSON(t, flat)
	if string(got) != string(want) {
		t.Errorf("appendPatch\n%s\nwant\n%s", got, want)
	}
}

func FuzzAppendValue(f *testing.F) {
	f.Add([]byte(`{"a":[1,2.5,-0,1e300,1e-300,"x\u2028<>&\"\\"],"b":null,"c":{"d":true}}`))
	f.Add([]byte(`"\ud800 \u0000 \u001f"`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var v any
		if json.Unmarshal(data, &v) != nil {
			return
		}
		got := appendValue(nil, v)
		var back any
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("appendValue(%q) = %q: %v", data, got, err)
		}
		if !reflect.DeepEqual(back, v) {
			t.Fatalf("appendValue(%q) = %q, which decodes to %#v", data, got, back)
		}
		// encoding/json sorts keys: compare its encodings of the two.
		if a, b := mustJSON(t, back), mustJSON(t, v); string(a) != string(b) {
			t.Fatalf("appendValue(%q) = %q", data, got)
		}
		if _, isMap := v.(map[string]any); !isMap && !strings.Contains(string(data), "{") {
			if want := mustJSON(t, v); string(got) != string(want) {
				t.Fatalf("appendValue(%q) = %q; encoding/json says %q", data, got, want)
			}
		}
	})
}

func opStrings(t *testing.T, ops []gomodules.Operation) []string {
	var out []string
	for _, op := range ops {
		out = append(out, string(mustJSON(t, &op)))
	}
	slices.Sort(out)
	return out
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// applyPatch applies a JSON patch to doc, as the API server does.
func applyPatch(t *testing.T, patch, doc []byte) []byte {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", patch, err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply patch %s: %v", patch, err)
	}
	return out
}

// jsonEqual reports whether two JSON documents hold the same value.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var av, bv any
	if err := json.Unmarshal(a, &av); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &bv); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(av, bv)
}

// decodeJSON must decode every input as encoding/json does: same value, same success.
func FuzzDecodeJSON(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.pod.yaml")
	for _, file := range files {
		raw := mustJSON(f, podFromFile(f, file))
		f.Add(raw)
		f.Add(review(f, "admission.k8s.io/v1", podResource, json.RawMessage(raw)))
	}
	f.Add([]byte(`{"metadata":{"name":"a","Name":"b","annotations":{"k":"v","k":"w"}}}`))
	f.Add([]byte("{\"METADATA\":{\"name\":\"\xff\"},\"spec\":null}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var wantPod, gotPod corev1.Pod
		errWant, errGot := json.Unmarshal(data, &wantPod), decodeJSON(data, &gotPod)
		if (errWant == nil) != (errGot == nil) || errWant == nil && !reflect.DeepEqual(wantPod, gotPod) {
			t.Fatalf("pod %q: encoding/json %v, %+v\ndecodeJSON %v, %+v", data, errWant, wantPod, errGot, gotPod)
		}
		var wantRev, gotRev admissionv1.AdmissionReview
		errWant, errGot = json.Unmarshal(data, &wantRev), decodeJSON(data, &gotRev)
		if (errWant == nil) != (errGot == nil) || errWant == nil && !reflect.DeepEqual(wantRev, gotRev) {
			t.Fatalf("review %q: encoding/json %v, %+v\ndecodeJSON %v, %+v", data, errWant, wantRev, errGot, gotRev)
		}
	})
}
