package injector

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// review wraps an object in an AdmissionReview request body.
func review(t testing.TB, apiVersion string, res metav1.GroupVersionResource, obj any) []byte {
	t.Helper()
	r := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: apiVersion, Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: types.UID("uid-1"), Resource: res, Operation: admissionv1.Create,
			Namespace: "shop", Object: runtime.RawExtension{Raw: mustJSON(t, obj)}},
	}
	return mustJSON(t, r)
}

func podFromFile(t testing.TB, file string) *corev1.Pod {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var p corev1.Pod
	if err := yaml.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

type fakeRoles map[string]string

func (f fakeRoles) RoleARN(_ context.Context, ns, name string) (string, error) {
	return f[ns+"/"+name], nil
}

func TestServer(t *testing.T) {
	cfg := testConfig()
	reg := prometheus.NewRegistry()
	h := &Handler{Config: &cfg, Log: testLogger(t), Metrics: NewMetrics(reg),
		Roles: fakeRoles{"shop/payments": "arn:aws:iam::123456789012:role/payments"}}
	srv := NewServer(h, 64<<10)

	annotated := podFromFile(t, "testdata/basic.pod.yaml")
	plain := podFromFile(t, "testdata/plain.pod.yaml")
	typo := podFromFile(t, "testdata/typo.pod.yaml")
	aws := podFromFile(t, "testdata/template-aws.pod.yaml")
	aws.Namespace = ""
	big := plain.DeepCopy()
	big.Annotations["filler"] = strings.Repeat("x", 70<<10)

	tests := []struct {
		name        string
		method      string
		ctype       string
		body        []byte
		wantStatus  int
		wantAllowed bool
		wantPatch   *corev1.Pod // the pod the patch must produce
		original    *corev1.Pod
		wantMsg     string
		wantAPI     string
	}{
		{name: "annotated pod", body: review(t, "admission.k8s.io/v1", podResource, annotated), wantStatus: 200, wantAllowed: true,
			original: annotated, wantPatch: mustMutate(t, annotated, &cfg, Facts{})},
		{name: "v1beta1 review", body: review(t, "admission.k8s.io/v1beta1", podResource, annotated), wantStatus: 200, wantAllowed: true,
			original: annotated, wantPatch: mustMutate(t, annotated, &cfg, Facts{}), wantAPI: "admission.k8s.io/v1beta1"},
		{name: "role from service account", body: review(t, "admission.k8s.io/v1", podResource, aws), wantStatus: 200, wantAllowed: true,
			original: aws, wantPatch: mustMutate(t, aws, &cfg, Facts{ServiceAccountRoleARN: "arn:aws:iam::123456789012:role/payments"})},
		{name: "plain pod", body: review(t, "admission.k8s.io/v1", podResource, plain), wantStatus: 200, wantAllowed: true},
		{name: "typo", body: review(t, "admission.k8s.io/v1", podResource, typo), wantStatus: 200,
			wantMsg: "sidekey.io/vault-roel: unknown sidekey annotation; did you mean sidekey.io/vault-role?"},
		{name: "not a pod", body: review(t, "admission.k8s.io/v1", metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"},
			map[string]any{"metadata": map[string]any{"annotations": map[string]string{KeyInject: "true"}}}), wantStatus: 200, wantAllowed: true},
		{name: "malformed json", body: []byte(`{"apiVersion":`), wantStatus: 400},
		{name: "not a review", body: []byte(`{"apiVersion":"v1","kind":"Pod"}`), wantStatus: 400},
		{name: "no request", body: []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), wantStatus: 400},
		{name: "too big", body: review(t, "admission.k8s.io/v1", podResource, big), wantStatus: 413},
		{name: "wrong content type", ctype: "text/plain", body: review(t, "admission.k8s.io/v1", podResource, plain), wantStatus: 415},
		{name: "GET", method: "GET", wantStatus: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, ctype := cmpOr(tt.method, "POST"), cmpOr(tt.ctype, "application/json")
			req := httptest.NewRequest(method, "/mutate", bytes.NewReader(tt.body))
			req.Header.Set("Content-Type", ctype)
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			if rec.Code != tt.wantStatus {
				t.Fatalf("status %d; want %d; body %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if tt.wantStatus != 200 {
				return
			}
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
				t.Fatal(err)
			}
			if want := cmpOr(tt.wantAPI, "admission.k8s.io/v1"); out.APIVersion != want || out.Kind != "AdmissionReview" {
				t.Errorf("response %s %s; want %s AdmissionReview", out.APIVersion, out.Kind, want)
			}
			if out.Response.UID != "uid-1" || out.Response.Allowed != tt.wantAllowed {
				t.Fatalf("response uid %q allowed %v; want uid-1 %v (%+v)", out.Response.UID, out.Response.Allowed, tt.wantAllowed, out.Response.Result)
			}
			if tt.wantMsg != "" && (out.Response.Result == nil || !strings.Contains(out.Response.Result.Message, tt.wantMsg)) {
				t.Errorf("message %+v; want it to contain %q", out.Response.Result, tt.wantMsg)
			}
			if tt.wantPatch == nil {
				if len(out.Response.Patch) != 0 {
					t.Errorf("unexpected patch %s", out.Response.Patch)
				}
				return
			}
			patched := applyPatch(t, out.Response.Patch, mustJSON(t, tt.original))
			var got corev1.Pod
			if err := json.Unmarshal(patched, &got); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.wantPatch, &got); d != "" {
				t.Errorf("patched pod differs from Mutate (-want +got):\n%s", d)
			}
			if len(out.Response.Warnings) != 0 && tt.name == "annotated pod" {
				t.Errorf("warnings %q for a pod with runAsUser", out.Response.Warnings)
			}
		})
	}
	if got := counter(t, h.Metrics.injections.WithLabelValues("shop")); got != 3 {
		t.Errorf("injections{namespace=shop} = %v; want 3", got)
	}
	if got := counter(t, h.Metrics.denials.WithLabelValues("shop")); got != 1 {
		t.Errorf("denials{namespace=shop} = %v; want 1", got)
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func mustMutate(t testing.TB, p *corev1.Pod, cfg *Config, f Facts) *corev1.Pod {
	t.Helper()
	res, err := Mutate(p, cfg, f)
	if err != nil || !res.Injected {
		t.Fatalf("Mutate = %v, %v", res.Injected, err)
	}
	return res.Pod
}

func FuzzDecodeReview(f *testing.F) {
	pod := podFromFile(f, "testdata/basic.pod.yaml")
	f.Add(review(f, "admission.k8s.io/v1", podResource, pod))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","object":null}}`))
	f.Add([]byte(`null`))
	cfg := testConfig()
	h := &Handler{Config: &cfg, Log: slog.New(slog.DiscardHandler)}
	srv := NewServer(h, 1<<20)
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeReview(body)
		if err != nil {
			return
		}
		if r.Request == nil || r.Request.UID == "" {
			t.Fatalf("DecodeReview(%q) accepted a review without request uid", body)
		}
		// The whole server must answer any decodable review without panicking, with its uid.
		req := httptest.NewRequest("POST", "/mutate", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		var out admissionv1.AdmissionReview
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &out) != nil || out.Response == nil || out.Response.UID != r.Request.UID {
			t.Fatalf("ServeHTTP(%q) = %d %s", body, rec.Code, rec.Body)
		}
	})
}

// BenchmarkWebhookTLS measures whole admission reviews over TLS (HTTP/2) on loopback. The load
// comes from h2load (Debian's nghttp2-client, `make deps`), a separate C process, so the
// generator's own allocations and GC do not run inside the webhook as an in-process Go client's
// would; it still shares this machine's cores with the server.
//
// The pod is testdata/defaulted.pod.yaml, as the API server sends it. Kinds: "floor" reads the
// body and writes a fixed answer without decoding anything, what TLS and HTTP/2 alone cost on
// the machine (no webhook can be faster); "anchor-allow" is a webhook that reads the review and
// allows it unchanged, the floor plus the review's own decoding; "replicas" sends one pod over
// and over, as a ReplicaSet's pods arrive (the answer cache); "renamed" gives each review's pod a
// name of its own before the webhook reads it, as a StatefulSet's or DaemonSet's pods arrive (the
// patch cache); "new" turns both caches off, so every review runs the whole decode, mutation,
// diff and encode, as the first pod of a workload does.
//
// "c=N" is closed-loop: N connections, one review in flight on each, as fast as they are
// answered: reviews/s is the most the server sustains. "c=16/rate=5000" is open-loop: one
// connection, up to 16 reviews in flight, paced at 5,000 reviews/s, the target; its p99
// is the latency a caller sees at that load. Each run reports reviews/s (achieved), p50 and p99
// in µs.
func BenchmarkWebhookTLS(b *testing.B) {
	h2load, err := exec.LookPath("h2load")
	if err != nil {
		b.Fatal("h2load not found: run make deps (Debian package nghttp2-client)")
	}
	defer debug.SetGCPercent(debug.SetGCPercent(GCPercent)) // as sidekey webhook runs
	pod := podFromFile(b, "testdata/defaulted.pod.yaml")
	pod.Name = "web-00000000"
	body := review(b, "admission.k8s.io/v1", podResource, pod)
	at := bytes.Index(body, []byte("web-00000000")) + len("web-")
	bodyFile := filepath.Join(b.TempDir(), "review.json")
	if err := os.WriteFile(bodyFile, body, 0o600); err != nil {
		b.Fatal(err)
	}
	anchor := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rev, err := DecodeReview(body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		out, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: rev.TypeMeta,
			Response: &admissionv1.AdmissionResponse{UID: rev.Request.UID, Allowed: true}})
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	})
	floor := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"0","allowed":true}}`))
	})
	sidekey := func(cache bool) http.Handler {
		cfg := testConfig()
		h := &Handler{Config: &cfg, Log: slog.New(slog.DiscardHandler), Metrics: NewMetrics(prometheus.NewRegistry())}
		h.answers.off, h.patches.off = !cache, !cache
		return NewServer(h, 0)
	}
	var n atomic.Int64
	renamed := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			copy(body[at:], fmt.Sprintf("%08x", n.Add(1)))
			r.Body = io.NopCloser(bytes.NewReader(body))
			h.ServeHTTP(w, r)
		})
	}
	for _, k := range []struct {
		name string
		h    http.Handler
	}{{"floor", floor}, {"anchor-allow", anchor}, {"replicas", sidekey(true)}, {"renamed", renamed(sidekey(true))}, {"new", sidekey(false)}} {
		ts := httptest.NewUnstartedServer(k.h)
		ts.EnableHTTP2 = true
		ts.StartTLS()
		for _, c := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/c=%d", k.name, c), func(b *testing.B) {
				runH2load(b, h2load, ts.URL+"/mutate", bodyFile, c, 0)
			})
		}
		b.Run(k.name+"/c=16/rate=5000", func(b *testing.B) {
			runH2load(b, h2load, ts.URL+"/mutate", bodyFile, 16, 5000)
		})
		ts.Close()
	}
}

// runH2load sends max(b.N, c) reviews from c connections, one stream each; rate > 0 paces them
// to rate reviews/s in all. It reports what the per-request log says.
func runH2load(b *testing.B, h2load, url, bodyFile string, c, rate int) {
	n := max(b.N, c)
	logFile := filepath.Join(b.TempDir(), "h2load.log")
	args := []string{"-n", strconv.Itoa(n), "-H", "content-type: application/json", "-d", bodyFile, "--log-file", logFile}
	if rate > 0 {
		// One connection, as the API server keeps one per webhook, paced by one timer: c
		// connections with c timers would start in step and send in bursts of c.
		args = append(args, "-c", "1", "-m", strconv.Itoa(c), "--rps", strconv.Itoa(rate))
	} else {
		args = append(args, "-c", strconv.Itoa(c), "-m", "1")
	}
	cpu0 := processCPU(b)
	b.ResetTimer()
	out, err := exec.Command(h2load, append(args, url)...).CombinedOutput()
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	if err != nil {
		b.Fatalf("h2load: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(logFile)
	if err != nil {
		b.Fatal(err)
	}
	// Columns: start (µs since the epoch), HTTP status, duration (µs).
	var lat []int64
	first, last := int64(math.MaxInt64), int64(0)
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			b.Fatalf("h2load log line %q", line)
		}
		start, _ := strconv.ParseInt(f[0], 10, 64)
		d, _ := strconv.ParseInt(f[2], 10, 64)
		if f[1] != "200" {
			b.Fatalf("status %s in h2load log", f[1])
		}
		lat = append(lat, d)
		first, last = min(first, start), max(last, start+d)
	}
	if len(lat) != n {
		b.Fatalf("h2load logged %d of %d reviews:\n%s", len(lat), n, out)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(n)/(float64(last-first)/1e6), "reviews/s")
	b.ReportMetric(float64(lat[n/2]), "p50-µs")
	b.ReportMetric(float64(lat[n*99/100]), "p99-µs")
	// The webhook's own CPU (this process; h2load is a child), less noisy on a shared machine
	// than the rate.
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/review")
	b.ReportMetric(0, "ns/op") // the time is h2load's, not one review's
}

// processCPU is the user and system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkServeHTTP is one review through the HTTP handler without the network, for the pod
// as the API server sends it: "new" decodes, mutates, diffs and encodes a pod never seen
// before (both caches off); "renamed" gives every pod its own name, as a StatefulSet's pods
// arrive, so the answer cache misses but the patch cache hits; "plain" is a pod without
// sidekey annotations (skipped without decoding the pod).
func BenchmarkServeHTTP(b *testing.B) {
	for _, k := range []struct{ name, file string }{
		{"new", "testdata/defaulted.pod.yaml"}, {"renamed", "testdata/defaulted.pod.yaml"}, {"plain", "testdata/plain.pod.yaml"},
	} {
		cfg := testConfig()
		h := &Handler{Config: &cfg, Log: slog.New(slog.DiscardHandler), Metrics: NewMetrics(prometheus.NewRegistry())}
		h.answers.off, h.patches.off = k.name == "new", k.name == "new"
		srv := NewServer(h, 0)
		pod := podFromFile(b, k.file)
		pod.Name = "web-00000000"
		body := review(b, "admission.k8s.io/v1", podResource, pod)
		at := bytes.Index(body, []byte("web-00000000"))
		b.Run(k.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				copy(body[at+4:], fmt.Sprintf("%08x", i))
				req := httptest.NewRequest("POST", "/mutate", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				rec := httptest.NewRecorder()
				srv.ServeHTTP(rec, req)
				if rec.Code != 200 {
					b.Fatal(rec.Code)
				}
			}
		})
	}
}

// admit sends pod to srv in an AdmissionReview and returns the response.
func admit(t *testing.T, srv http.Handler, pod *corev1.Pod) admissionv1.AdmissionResponse {
	t.Helper()
	req := httptest.NewRequest("POST", "/mutate", bytes.NewReader(review(t, "admission.k8s.io/v1", podResource, pod)))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
		t.Fatalf("response %s: %v", rec.Body, err)
	}
	return *out.Response
}

// The pods of a StatefulSet share their patch: the second is answered from the patch cache,
// and its patch still gives that pod's own mutation.
func TestPatchCache(t *testing.T) {
	cfg := testConfig()
	h := &Handler{Config: &cfg, Log: testLogger(t)}
	srv := NewServer(h, 0)
	base := podFromFile(t, "testdata/defaulted.pod.yaml")
	for i, ann := range []string{"web", "web", "other"} {
		pod := base.DeepCopy()
		pod.GenerateName, pod.Name = "", fmt.Sprint("web-", i)
		pod.Labels["statefulset.kubernetes.io/pod-name"] = pod.Name
		pod.Spec.Hostname = pod.Name
		pod.Annotations[KeyVaultRole] = ann
		resp := admit(t, srv, pod)
		got := applyPatch(t, resp.Patch, mustJSON(t, pod))
		if want := mustJSON(t, mustMutate(t, pod, &cfg, Facts{})); !jsonEqual(t, got, want) {
			t.Errorf("pod %d: patched\n%s\nwant\n%s", i, got, want)
		}
	}
	if n := len(h.patches.byKey); n != 2 {
		t.Errorf("%d patches remembered; want 2 (web-0 and web-1 share one)", n)
	}
}

func TestAnswerCache(t *testing.T) {
	cfg := testConfig()
	roles := countingRoles{arn: "arn:aws:iam::123456789012:role/a"}
	h := &Handler{Config: &cfg, Log: testLogger(t), Metrics: NewMetrics(prometheus.NewRegistry()), Roles: &roles}
	srv := NewServer(h, 0)
	call := func(pod *corev1.Pod) admissionv1.AdmissionResponse { return admit(t, srv, pod) }
	for _, file := range []string{"testdata/basic.pod.yaml", "testdata/typo.pod.yaml", "testdata/root.pod.yaml"} {
		pod := podFromFile(t, file)
		first, second := call(pod), call(pod)
		if d := cmp.Diff(first, second); d != "" {
			t.Errorf("%s: remembered answer differs (-first +second):\n%s", file, d)
		}
	}
	if got := counter(t, h.Metrics.injections.WithLabelValues("shop")); got != 4 {
		t.Errorf("injections = %v; want 4 (remembered answers are counted too)", got)
	}
	// An answer that depends on the ServiceAccount's role is looked up every time.
	aws := podFromFile(t, "testdata/template-aws.pod.yaml")
	call(aws)
	call(aws)
	if roles.calls.Load() != 2 {
		t.Errorf("role looked up %d times; want 2", roles.calls.Load())
	}
}

type countingRoles struct {
	arn   string
	calls atomic.Int32
}

func (r *countingRoles) RoleARN(context.Context, string, string) (string, error) {
	r.calls.Add(1)
	return r.arn, nil
}

type countingSAs struct{ calls atomic.Int32 }

func (c *countingSAs) Get(_ context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	c.calls.Add(1)
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Annotations: map[string]string{ServiceAccountRoleARN: "arn:aws:iam::123456789012:role/" + name}}}, nil
}

func TestServiceAccountRolesCache(t *testing.T) {
	sas := &countingSAs{}
	r := &ServiceAccountRoles{Get: sas, TTL: time.Hour}
	for range 2 {
		if arn, err := r.RoleARN(t.Context(), "shop", "web"); err != nil || arn != "arn:aws:iam::123456789012:role/web" {
			t.Fatalf("RoleARN = %q, %v", arn, err)
		}
	}
	if sas.calls.Load() != 1 {
		t.Errorf("%d lookups; want 1 (the second is cached)", sas.calls.Load())
	}
	for i := range 2 * roleCacheSize {
		if _, err := r.RoleARN(t.Context(), "ns", fmt.Sprint("sa-", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(r.cache); n > roleCacheSize {
		t.Errorf("cache holds %d entries; want at most %d", n, roleCacheSize)
	}
}
