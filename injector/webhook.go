package injector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Handler is the admission.Handler of the webhook: it decodes the pod, calls Mutate and answers
// with the JSON patch between the two. Everything HTTP lives in Server.
type Handler struct {
	Config *Config
	Log    *slog.Logger
	// Roles looks up the IRSA role of a pod's ServiceAccount; nil skips the lookup.
	Roles   RoleLookup
	Metrics *Metrics

	// answers remembers the response for recent pod objects: the replicas of one ReplicaSet
	// arrive byte for byte identical, and their answer depends on nothing else.
	answers byteCache[*answer]
	// patches remembers the patch for recent pruned pairs of pods (see podPatch): the pods of
	// one StatefulSet or DaemonSet differ only where the mutation changes nothing.
	patches byteCache[[]byte]
}

// RoleLookup finds the eks.amazonaws.com/role-arn annotation of a ServiceAccount ("" when unset).
type RoleLookup interface {
	RoleARN(ctx context.Context, namespace, serviceAccount string) (string, error)
}

// MatchConditionExpression is the CEL matchCondition for the MutatingWebhookConfiguration: only
// pods with a sidekey.io/ annotation are sent, so a typo'd key is still refused while other pods
// are admitted without calling the webhook.
const MatchConditionExpression = `has(object.metadata.annotations) && object.metadata.annotations.exists(k, k.startsWith('sidekey.io/'))`

var podResource = metav1.GroupVersionResource{Version: "v1", Resource: "pods"}

// Handle implements admission.Handler.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Resource != podResource || req.SubResource != "" || req.Operation != admissionv1.Create {
		return admission.Allowed("not a pod creation")
	}
	// The replicas of a ReplicaSet arrive byte for byte identical: answer them from memory.
	if a, ok := h.answers.get(req.Object.Raw); ok {
		h.Metrics.observe(req.Namespace, a.result)
		if a.result != resultSkipped {
			h.Log.Info("answer reused for an identical pod", "result", a.result, "namespace", req.Namespace, "uid", string(req.UID))
		}
		return a.response()
	}
	// Most pods carry no sidekey annotation. The API server writes JSON without escaping '/',
	// so a pod whose bytes lack the prefix has none, and needs no decoding at all.
	if !bytes.Contains(req.Object.Raw, []byte(prefix)) {
		h.Metrics.observe(req.Namespace, resultSkipped)
		return admission.Allowed("")
	}
	var pod corev1.Pod
	if err := decodeJSON(req.Object.Raw, &pod); err != nil {
		h.Metrics.observe(req.Namespace, resultError)
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod: %w", err))
	}
	if !hasPrefixedKey(pod.Annotations) {
		h.Metrics.observe(req.Namespace, resultSkipped)
		return admission.Allowed("")
	}
	// An answer that depends on a ServiceAccount's role is not remembered.
	remember := h.Roles == nil || !needsRole(pod.Annotations)
	resp, result := h.handlePod(ctx, req, &pod) // consumes pod
	h.Metrics.observe(req.Namespace, result)
	if remember && result != resultError {
		h.answers.put(req.Object.Raw, newAnswer(resp, result))
	}
	return resp
}

// handlePod answers for a pod that carries sidekey annotations. It consumes pod.
func (h *Handler) handlePod(ctx context.Context, req admission.Request, pod *corev1.Pod) (admission.Response, string) {
	log := h.Log.With("namespace", req.Namespace, "pod", podName(pod), "uid", string(req.UID))

	var facts Facts
	if h.Roles != nil && needsRole(pod.Annotations) {
		sa := firstNonEmpty(pod.Spec.ServiceAccountName, pod.Spec.DeprecatedServiceAccount, "default")
		arn, err := h.Roles.RoleARN(ctx, req.Namespace, sa)
		if err != nil {
			log.Error("look up service account role", "serviceAccount", sa, "err", err)
			return admission.Errored(http.StatusInternalServerError, fmt.Errorf("look up the IRSA role of service account %s/%s: %w", req.Namespace, sa, err)), resultError
		}
		facts.ServiceAccountRoleARN = arn
	}

	res, err := Mutate(pod, h.Config, facts)
	if err != nil {
		msg := strings.ReplaceAll(err.Error(), "\n", "; ")
		log.Info("pod refused", "reason", msg)
		return admission.Denied(msg), resultDenied
	}
	if !res.Injected {
		return admission.Allowed("").WithWarnings(res.Warnings...), resultSkipped
	}
	resp, err := podPatch(pod, res.Pod, &h.patches)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encode pod: %w", err)), resultError
	}
	if !resp.Allowed {
		return resp, resultError
	}
	log.Info("agent injected", "mode", res.Spec.Mode, "secrets", len(res.Spec.Secrets), "warnings", len(res.Warnings))
	return resp.WithWarnings(res.Warnings...), resultInjected
}

func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}

// needsRole reports whether a pod reads from AWS without naming its role.
func needsRole(ann map[string]string) bool {
	if _, ok := ann[KeyAWSRoleARN]; ok {
		return false
	}
	for k, v := range ann {
		if (strings.HasPrefix(k, KeySecret) || strings.HasPrefix(k, KeyTemplate)) && strings.Contains(v, "aws-s") {
			return true
		}
	}
	return false
}

type answer struct {
	result   string
	allowed  bool
	status   metav1.Status
	patch    []byte
	warnings []string
}

func newAnswer(r admission.Response, result string) *answer {
	a := &answer{result: result, allowed: r.Allowed, warnings: r.Warnings}
	if r.Result != nil {
		a.status = *r.Result
	}
	if len(r.Patch) > 0 {
		a.patch = r.Patch
	}
	return a
}

// response builds a fresh Response: callers complete and encode it.
func (a *answer) response() admission.Response {
	st := a.status
	r := admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: a.allowed, Result: &st, Warnings: a.warnings}}
	if a.patch != nil {
		pt := admissionv1.PatchTypeJSONPatch
		r.Patch, r.PatchType = a.patch, &pt
	}
	if st.Code == 0 {
		r.Result = nil
	}
	return r
}

// byteCache is a small map keyed by bytes, compared in full on a hit, that forgets its oldest
// entries beyond byteCacheSize. Its values are shared: nobody may modify them.
type byteCache[V any] struct {
	off   bool // remember nothing (for benchmarks of the full path)
	mu    sync.Mutex
	seed  maphash.Seed
	byKey map[uint64]cached[V]
	order []uint64 // insertion order, for eviction
}

type cached[V any] struct {
	key []byte
	v   V
}

const byteCacheSize = 512

func (c *byteCache[V]) get(key []byte) (V, bool) {
	var zero V
	if c.off {
		return zero, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		return zero, false
	}
	e, ok := c.byKey[maphash.Bytes(c.seed, key)]
	if !ok || !bytes.Equal(e.key, key) {
		return zero, false
	}
	return e.v, true
}

func (c *byteCache[V]) put(key []byte, v V) {
	if c.off {
		return
	}
	key = bytes.Clone(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		c.seed, c.byKey = maphash.MakeSeed(), map[uint64]cached[V]{}
	}
	k := maphash.Bytes(c.seed, key)
	if _, ok := c.byKey[k]; !ok {
		c.order = append(c.order, k)
	}
	c.byKey[k] = cached[V]{key, v}
	if len(c.order) > byteCacheSize {
		delete(c.byKey, c.order[0])
		c.order = c.order[1:]
	}
}

// ServiceAccountGetter is the part of client-go's CoreV1 that ServiceAccountRoles needs.
type ServiceAccountGetter interface {
	Get(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)
}

// ServiceAccountRoles is a RoleLookup with a short cache in front of the API server.
type ServiceAccountRoles struct {
	Get ServiceAccountGetter
	TTL time.Duration

	mu    sync.Mutex
	cache map[string]roleEntry
}

type roleEntry struct {
	arn     string
	fetched time.Time
}

// RoleARN implements RoleLookup. A missing ServiceAccount has no role.
func (r *ServiceAccountRoles) RoleARN(ctx context.Context, namespace, name string) (string, error) {
	key := namespace + "/" + name
	r.mu.Lock()
	e, ok := r.cache[key]
	r.mu.Unlock()
	if ok && time.Since(e.fetched) < r.TTL {
		return e.arn, nil
	}
	sa, err := r.Get.Get(ctx, namespace, name)
	switch {
	case apierrors.IsNotFound(err):
		sa = &corev1.ServiceAccount{}
	case err != nil:
		return "", err
	}
	arn := sa.Annotations[ServiceAccountRoleARN]
	now := time.Now()
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[string]roleEntry{}
	}
	// Keep the map to the ServiceAccounts seen within one TTL, and never above roleCacheSize.
	if len(r.cache) >= roleCacheSize {
		for k, e := range r.cache {
			if now.Sub(e.fetched) >= r.TTL {
				delete(r.cache, k)
			}
		}
		if len(r.cache) >= roleCacheSize {
			clear(r.cache)
		}
	}
	r.cache[key] = roleEntry{arn: arn, fetched: now}
	r.mu.Unlock()
	return arn, nil
}

// roleCacheSize bounds ServiceAccountRoles' cache.
const roleCacheSize = 4096

// Results counted by the requests metric.
const (
	resultInjected = "injected"
	resultSkipped  = "skipped"
	resultDenied   = "denied"
	resultError    = "error"
)

// Metrics are the webhook's Prometheus metrics.
type Metrics struct {
	requests   *prometheus.CounterVec
	latency    prometheus.Histogram
	injections *prometheus.CounterVec
	denials    *prometheus.CounterVec
}

// NewMetrics registers the webhook's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidekey_webhook_requests_total",
			Help: "Admission reviews answered, by result (injected, skipped, denied, error, bad_request)."}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sidekey_webhook_request_duration_seconds",
			Help:    "Time to answer one admission review, from the first byte read to the last written.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}}),
		injections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidekey_webhook_injections_total",
			Help: "Pods the agent was injected into, by namespace."}, []string{"namespace"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sidekey_webhook_denials_total",
			Help: "Pods refused for their sidekey annotations, by namespace."}, []string{"namespace"}),
	}
	reg.MustRegister(m.requests, m.latency, m.injections, m.denials)
	return m
}

func (m *Metrics) observe(namespace, result string) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(result).Inc()
	switch result {
	case resultInjected:
		m.injections.WithLabelValues(namespace).Inc()
	case resultDenied:
		m.denials.WithLabelValues(namespace).Inc()
	}
}

// Server is the webhook's HTTP side: body limit, content type, AdmissionReview decoding (HTTP 400
// when malformed), then controller-runtime's admission.Webhook around the Handler.
type Server struct {
	hook    *admission.Webhook
	maxBody int64
	log     *slog.Logger
	metrics *Metrics
}

// GCPercent is the garbage collector's target that `sidekey webhook` runs with unless GOGC is
// set. A review allocates about 60 KiB that is garbage once it is answered; at Go's default of
// 100 the collector held new pods back by a third at 16 concurrent reviews (BenchmarkWebhookTLS),
// while the live heap stays a few MiB either way.
const GCPercent = 400

// DefaultMaxBodyBytes bounds an AdmissionReview: two objects of at most 3 MiB plus the envelope.
const DefaultMaxBodyBytes = 7 << 20

// NewServer wraps h for HTTP. maxBody <= 0 means DefaultMaxBodyBytes.
func NewServer(h *Handler, maxBody int64) *Server {
	if maxBody <= 0 {
		maxBody = DefaultMaxBodyBytes
	}
	// Handler logs what matters itself; skip controller-runtime's per-request logger values.
	hook := &admission.Webhook{Handler: h, LogConstructor: func(base logr.Logger, _ *admission.Request) logr.Logger { return base }}
	// Give controller-runtime our logger instead of its global one.
	if _, err := admission.StandaloneWebhook(hook, admission.StandaloneOptions{Logger: logr.FromSlogHandler(h.Log.Handler())}); err != nil {
		panic(err) // cannot happen without a metrics path
	}
	return &Server{hook: hook, maxBody: maxBody, log: h.Log, metrics: h.Metrics}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	defer func() {
		if s.metrics != nil {
			s.metrics.latency.Observe(time.Since(start).Seconds())
		}
	}()
	if r.Method != http.MethodPost {
		s.fail(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		s.fail(w, http.StatusUnsupportedMediaType, "content type must be application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.fail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes (--max-body-bytes)", s.maxBody))
			return
		}
		s.fail(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	review, err := DecodeReview(body)
	if err != nil {
		s.fail(w, http.StatusBadRequest, err.Error())
		return
	}
	resp := s.hook.Handle(r.Context(), admission.Request{AdmissionRequest: *review.Request})
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: &resp.AdmissionResponse})
	if err != nil {
		s.fail(w, http.StatusInternalServerError, "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

func (s *Server) fail(w http.ResponseWriter, code int, msg string) {
	s.log.Warn("bad admission request", "status", code, "err", msg)
	if s.metrics != nil {
		s.metrics.requests.WithLabelValues("bad_request").Inc()
	}
	http.Error(w, msg, code)
}

// Review versions the API server may send.
var reviewVersions = map[schema.GroupVersion]bool{
	admissionv1.SchemeGroupVersion:                  true,
	{Group: "admission.k8s.io", Version: "v1beta1"}: true,
}

// DecodeReview parses an AdmissionReview request (v1 or v1beta1, which share their shape).
func DecodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	var review admissionv1.AdmissionReview
	if err := decodeJSON(body, &review); err != nil {
		return nil, fmt.Errorf("decode AdmissionReview: %w", err)
	}
	gv, err := schema.ParseGroupVersion(review.APIVersion)
	if err != nil || !reviewVersions[gv] || review.Kind != "AdmissionReview" {
		return nil, fmt.Errorf("decode AdmissionReview: apiVersion %q kind %q: want admission.k8s.io/v1 AdmissionReview", review.APIVersion, review.Kind)
	}
	if review.Request == nil || review.Request.UID == "" {
		return nil, errors.New("decode AdmissionReview: no request or no request uid")
	}
	return &review, nil
}

// decodeJSON decodes data into v, a pointer, with github.com/go-json-experiment/json (what
// becomes encoding/json/v2): two to four times faster than encoding/json on reviews and pods.
// Names match as encoding/json matches them (exactly, else ignoring case), but v2 is stricter:
// a duplicate name or invalid UTF-8 is an error. The API server's own encoding never has
// either; whatever v2 refuses is decoded again by encoding/json, so every input decodes as
// encoding/json decodes it (FuzzDecodeJSON).
func decodeJSON(data []byte, v any) error {
	if jsonv2.Unmarshal(data, v, jsonv2.MatchCaseInsensitiveNames(true)) == nil {
		return nil
	}
	reflect.ValueOf(v).Elem().SetZero()
	return json.Unmarshal(data, v)
}

// DetectNativeSidecars asks the API server its version: native sidecars (init containers with
// restartPolicy Always) are on by default from Kubernetes 1.29.
func DetectNativeSidecars(d discovery.ServerVersionInterface) (bool, error) {
	v, err := d.ServerVersion()
	if err != nil {
		return false, fmt.Errorf("ask the API server its version (or set --native-sidecars): %w", err)
	}
	return nativeSidecarsSupported(v.Major, v.Minor)
}

func nativeSidecarsSupported(major, minor string) (bool, error) {
	ma, err1 := strconv.Atoi(strings.TrimRight(major, "+"))
	mi, err2 := strconv.Atoi(strings.TrimRight(minor, "+"))
	if err1 != nil || err2 != nil {
		return false, fmt.Errorf("API server version %q.%q: set --native-sidecars=true or false", major, minor)
	}
	return ma > 1 || (ma == 1 && mi >= 29), nil
}
