package injector

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/testenv"
)

// cluster is a real kube-apiserver with our webhook registered in front of it, its TLS
// self-managed by two "replicas" that the webhook server alternates between on every handshake.
type cluster struct {
	cs       kubernetes.Interface
	replicas [2]*SelfManagedTLS
	leaves   sync.Map // serial -> issuer serial, of every certificate served
	ns       string
	url      string   // of the webhook server, without path
	calls    sync.Map // pod name -> *atomic.Int32: reviews of that pod sent to /mutate
}

const (
	testWebhookNS     = "sidekey-system"
	testWebhookConfig = "sidekey-webhook"
)

func startCluster(t *testing.T, lifetimes func(*SelfManagedTLS)) *cluster {
	t.Helper()
	rc := testenv.StartAPIServer(t)
	cs := kubernetes.NewForConfigOrDie(rc)
	ctx := t.Context()
	c := &cluster{cs: cs, ns: "shop"}

	native, err := DetectNativeSidecars(cs.Discovery())
	if err != nil || !native {
		t.Fatalf("DetectNativeSidecars = %v, %v; want true on this API server", native, err)
	}
	cfg := testConfig()
	cfg.NativeSidecars = native

	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: testWebhookNS}},
		{ObjectMeta: metav1.ObjectMeta{Name: c.ns, Labels: map[string]string{"sidekey.io/injection": "enabled"}}},
	} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The webhook server: HTTP/1.1 without keep-alive, so every review is a new TLS handshake,
	// served by replica 0 or 1 in turn.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var turn atomic.Uint64
	h := &Handler{Config: &cfg, Log: testLogger(t), Roles: &ServiceAccountRoles{Get: saGet{cs}, TTL: time.Second}}
	mux := http.NewServeMux()
	webhook := NewServer(h, 0)
	mux.Handle("/mutate", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if rev, err := DecodeReview(body); err == nil {
			var meta metav1.PartialObjectMetadata
			if json.Unmarshal(rev.Request.Object.Raw, &meta) == nil {
				n, _ := c.calls.LoadOrStore(meta.Name, new(atomic.Int32))
				n.(*atomic.Int32).Add(1)
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		webhook.ServeHTTP(w, r)
	}))
	// Another mutating webhook, called after ours, that labels pods: the API server then
	// calls ours again (reinvocationPolicy IfNeeded).
	mux.Handle("/label", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rev, err := DecodeReview(body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		pt := admissionv1.PatchTypeJSONPatch
		resp := &admissionv1.AdmissionResponse{UID: rev.Request.UID, Allowed: true}
		if !bytes.Contains(rev.Request.Object.Raw, []byte(`"labeled-by":"zz"`)) {
			resp.Patch, resp.PatchType = []byte(`[{"op":"add","path":"/metadata/labels","value":{"labeled-by":"zz"}}]`), &pt
		}
		out, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: rev.TypeMeta, Response: resp})
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	}))
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			r := c.replicas[turn.Add(1)%2]
			cert, err := r.GetCertificate(hello)
			if err == nil {
				c.leaves.Store(cert.Leaf.SerialNumber.String(), cert.Leaf.Issuer.CommonName)
			}
			return cert, err
		},
	}}
	srv.SetKeepAlivesEnabled(false)
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	c.url = "https://" + ln.Addr().String()
	url := c.url + "/mutate"
	fail, none, ifNeeded := admregv1.Fail, admregv1.SideEffectClassNone, admregv1.IfNeededReinvocationPolicy
	timeout := int32(10)
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: testWebhookConfig},
		Webhooks: []admregv1.MutatingWebhook{{
			Name:         "inject.sidekey.io",
			ClientConfig: admregv1.WebhookClientConfig{URL: &url},
			Rules: []admregv1.RuleWithOperations{{Operations: []admregv1.OperationType{admregv1.Create},
				Rule: admregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"sidekey.io/injection": "enabled"}},
			// Only pods with some sidekey.io/ annotation are sent: typos are still refused,
			// pods that do not use sidekey are admitted without a round trip.
			MatchConditions:         []admregv1.MatchCondition{{Name: "sidekey-annotated", Expression: MatchConditionExpression}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			ReinvocationPolicy:      &ifNeeded,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	for i := range c.replicas {
		m := &SelfManagedTLS{Client: cs, Namespace: testWebhookNS, SecretName: "sidekey-webhook-tls",
			WebhookConfig: testWebhookConfig, DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
			Log: testLogger(t).With("replica", i)}
		if lifetimes != nil {
			lifetimes(m)
		}
		if err := m.Reconcile(ctx); err != nil {
			t.Fatalf("replica %d: first reconcile: %v", i, err)
		}
		if err := m.Ready(); err != nil {
			t.Fatal(err)
		}
		c.replicas[i] = m
	}
	// Wait until the API server calls the webhook (its configuration informer is asynchronous).
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		p, err := cs.CoreV1().Pods(c.ns).Create(ctx, testPod(fmt.Sprintf("warmup-%d", i), map[string]string{
			KeyInject: "true", KeyVaultRole: "app", KeySecret + "a": "vault:secret/data/a#k"}), metav1.CreateOptions{})
		if err == nil && p.Annotations[KeyStatus] == spec.StatusInjected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook never called: last pod %v, err %v", p != nil && p.Annotations != nil, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return c
}

type saGet struct{ cs kubernetes.Interface }

func (g saGet) Get(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	return g.cs.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
}

func testPod(name string, ann map[string]string) *corev1.Pod {
	uid := int64(1000)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: &uid},
			Containers: []corev1.Container{
				{Name: "app", Image: "example.com/app:1"},
				{Name: "logs", Image: "example.com/logs:1"},
			},
		},
	}
}

func TestAPIServer(t *testing.T) {
	c := startCluster(t, nil)
	ctx := t.Context()
	pods := c.cs.CoreV1().Pods(c.ns)

	t.Run("annotated pod is injected with a native sidecar", func(t *testing.T) {
		p, err := pods.Create(ctx, testPod("web", map[string]string{
			KeyInject: "true", KeyVaultRole: "web", KeySecret + "db": "vault:database/creds/web", KeyOnChange: "signal:app:HUP"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		stored, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkInjected(t, Result{Pod: stored, Spec: specOf(t, stored)})
		first := stored.Spec.InitContainers[0]
		if first.Name != spec.AgentContainer || first.RestartPolicy == nil || *first.RestartPolicy != corev1.ContainerRestartPolicyAlways || first.StartupProbe == nil {
			t.Errorf("first init container %s restartPolicy %v startupProbe %v; want the native sidecar", first.Name, first.RestartPolicy, first.StartupProbe)
		}
		if len(stored.Spec.Containers) != 2 {
			t.Errorf("%d containers; want the two app containers only", len(stored.Spec.Containers))
		}
		if stored.Spec.ShareProcessNamespace == nil || !*stored.Spec.ShareProcessNamespace || stored.Annotations[KeySharedProcessNS] != "true" {
			t.Errorf("shareProcessNamespace %v annotation %q; want true for on-change signal", stored.Spec.ShareProcessNamespace, stored.Annotations[KeySharedProcessNS])
		}
		for _, ctr := range stored.Spec.Containers {
			if !hasMount(ctr, spec.VolumeName, DefaultMountPath, true) {
				t.Errorf("container %s: no read-only mount of %s at %s", ctr.Name, spec.VolumeName, DefaultMountPath)
			}
		}
	})

	t.Run("plain pod is untouched", func(t *testing.T) {
		in := testPod("plain", map[string]string{"example.com/other": "x"})
		p, err := pods.Create(ctx, in, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Spec.InitContainers) != 0 || len(p.Spec.Containers) != 2 || len(p.Annotations) != 1 || len(p.Spec.Volumes) != 0 {
			t.Errorf("plain pod was changed: annotations %v, %d init containers, %d volumes", p.Annotations, len(p.Spec.InitContainers), len(p.Spec.Volumes))
		}
	})

	t.Run("typo is refused with the annotation named", func(t *testing.T) {
		_, err := pods.Create(ctx, testPod("typo", map[string]string{
			KeyInject: "true", prefix + "vault-roel": "web", KeySecret + "db": "vault:database/creds/web"}), metav1.CreateOptions{})
		want := "sidekey.io/vault-roel: unknown sidekey annotation; did you mean sidekey.io/vault-role?"
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "denied the request") {
			t.Fatalf("create = %v; want a denial containing %q", err, want)
		}
		if _, err := pods.Get(ctx, "typo", metav1.GetOptions{}); err == nil {
			t.Errorf("refused pod was stored")
		}
	})

	t.Run("secrets without sidekey.io/inject are refused", func(t *testing.T) {
		for name, c := range map[string]struct {
			ann  map[string]string
			want string
		}{
			"typo": {map[string]string{prefix + "injetc": "true", KeySecret + "db": "vault:database/creds/web"},
				"sidekey.io/injetc: unknown sidekey annotation; did you mean sidekey.io/inject?"},
			"forgot": {map[string]string{KeySecret + "db": "vault:database/creds/web"},
				`sidekey.io/inject: missing, but the pod declares sidekey.io/secret.db`},
		} {
			_, err := pods.Create(ctx, testPod(name, c.ann), metav1.CreateOptions{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: create = %v; want a denial containing %q", name, err, c.want)
			}
		}
	})

	t.Run("Job's pod is init-only", func(t *testing.T) {
		job, err := c.cs.BatchV1().Jobs(c.ns).Create(ctx, &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: "migrate"},
			Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{Name: "migrate", Image: "example.com/migrate:1"}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		yes := true
		in := testPod("migrate-x1", map[string]string{KeyInject: "true", KeyVaultRole: "migrate", KeySecret + "db": "vault:database/creds/migrate"})
		in.OwnerReferences = []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: job.Name, UID: job.UID, Controller: &yes}}
		in.Spec.RestartPolicy = corev1.RestartPolicyNever
		p, err := pods.Create(ctx, in, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ctr := range append(p.Spec.InitContainers, p.Spec.Containers...) {
			names = append(names, ctr.Name)
		}
		if got := strings.Join(names, ","); got != "sidekey-agent-init,app,logs" {
			t.Errorf("containers %s; want sidekey-agent-init,app,logs", got)
		}
		if s := specOf(t, p); s.Mode != spec.ModeInitOnly {
			t.Errorf("mode %s; want init-only", s.Mode)
		}
		if p.Spec.InitContainers[0].RestartPolicy != nil || strings.Join(p.Spec.InitContainers[0].Args, " ") != "--once" {
			t.Errorf("init agent restartPolicy %v args %q; want a plain init container with --once", p.Spec.InitContainers[0].RestartPolicy, p.Spec.InitContainers[0].Args)
		}
	})

	t.Run("IRSA role from the ServiceAccount", func(t *testing.T) {
		const arn = "arn:aws:iam::123456789012:role/payments"
		if _, err := c.cs.CoreV1().ServiceAccounts(c.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
			Name: "payments", Annotations: map[string]string{ServiceAccountRoleARN: arn}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		in := testPod("payments", map[string]string{KeyInject: "true", KeyAWSRegion: "eu-west-1", KeySecret + "flag": "aws-ssm:/prod/flag"})
		in.Spec.ServiceAccountName = "payments"
		p, err := pods.Create(ctx, in, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for _, e := range p.Spec.InitContainers[0].Env {
			env[e.Name] = e.Value
		}
		if env["AWS_ROLE_ARN"] != arn || env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "" {
			t.Errorf("agent env %v; want AWS_ROLE_ARN %s and a web identity token file", env, arn)
		}
		var aud string
		for _, v := range p.Spec.Volumes {
			if v.Name == AWSTokenVolume {
				aud = v.Projected.Sources[0].ServiceAccountToken.Audience
			}
		}
		if aud != "sts.amazonaws.com" {
			t.Errorf("aws token audience %q; want sts.amazonaws.com", aud)
		}
	})

	t.Run("injected pod passes the restricted Pod Security Standard", func(t *testing.T) {
		if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "strict", Labels: map[string]string{
			"sidekey.io/injection": "enabled", "pod-security.kubernetes.io/enforce": "restricted"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		strict := c.cs.CoreV1().Pods("strict")
		// The API server really enforces the standard: a bare pod is refused.
		if _, err := strict.Create(ctx, testPod("bare", nil), metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "restricted") {
			t.Fatalf("non-compliant pod: err = %v; want a PodSecurity refusal (is the plugin on?)", err)
		}
		in := testPod("compliant", map[string]string{KeyInject: "true", KeyVaultRole: "web", KeySecret + "db": "vault:database/creds/web"})
		yes, no := true, false
		in.Spec.SecurityContext.RunAsNonRoot = &yes
		in.Spec.SecurityContext.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
		for i := range in.Spec.Containers {
			in.Spec.Containers[i].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: &no,
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
		}
		p, err := strict.Create(ctx, in, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("restricted namespace refused the injected pod: %v", err)
		}
		if p.Annotations[KeyStatus] != spec.StatusInjected {
			t.Errorf("pod not injected")
		}
	})

	t.Run("the API server accepts every golden mutation", func(t *testing.T) {
		// Native and legacy layouts, templates, AWS, CA volumes, signal: validated for real
		// (server-side dry run, in a namespace the webhook does not watch).
		if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "offline"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		files, _ := filepath.Glob("testdata/*.pod.yaml")
		n := 0
		for _, file := range files {
			pod, cfg, facts := readCase(t, file)
			res, err := Mutate(pod, &cfg, facts)
			if err != nil || !res.Injected {
				continue
			}
			n++
			res.Pod.Namespace = "offline"
			if _, err := c.cs.CoreV1().Pods("offline").Create(ctx, res.Pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("%s: the API server refuses the mutated pod: %v", file, err)
			}
		}
		if n < 5 {
			t.Errorf("only %d golden cases inject", n)
		}
	})

	t.Run("the API server accepts sidekey inject output", func(t *testing.T) {
		b, err := os.ReadFile("testdata/workloads.golden.yaml")
		if err != nil {
			t.Fatal(err)
		}
		dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
		var create func(runtime.Object) error
		create = func(obj runtime.Object) error {
			var err error
			switch o := obj.(type) {
			case *appsv1.Deployment:
				_, err = c.cs.AppsV1().Deployments("offline").Create(ctx, o, dry)
			case *appsv1.StatefulSet:
				_, err = c.cs.AppsV1().StatefulSets("offline").Create(ctx, o, dry)
			case *appsv1.DaemonSet:
				_, err = c.cs.AppsV1().DaemonSets("offline").Create(ctx, o, dry)
			case *batchv1.Job:
				_, err = c.cs.BatchV1().Jobs("offline").Create(ctx, o, dry)
			case *batchv1.CronJob:
				_, err = c.cs.BatchV1().CronJobs("offline").Create(ctx, o, dry)
			case *corev1.Service:
				_, err = c.cs.CoreV1().Services("offline").Create(ctx, o, dry)
			case *corev1.List:
				for _, it := range o.Items {
					item, _, derr := scheme.Codecs.UniversalDeserializer().Decode(it.Raw, nil, nil)
					if derr != nil {
						return derr
					}
					if err := create(item); err != nil {
						return err
					}
				}
			default:
				return fmt.Errorf("unexpected %T", obj)
			}
			return err
		}
		n := 0
		for _, doc := range strings.Split(string(b), "\n---\n") {
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Fatalf("decode %q: %v", doc[:min(len(doc), 80)], err)
			}
			if m, ok := obj.(metav1.Object); ok {
				m.SetNamespace("")
			}
			if err := create(obj); err != nil {
				t.Errorf("the API server refuses %T from sidekey inject: %v", obj, err)
			}
			n++
		}
		if n < 4 {
			t.Errorf("%d documents", n)
		}
	})

	t.Run("a caBundle wiped by a redeploy is restored", func(t *testing.T) {
		api := c.cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
		mwc, err := api.Get(ctx, testWebhookConfig, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := mwc.Webhooks[0].ClientConfig.CABundle
		mwc.Webhooks[0].ClientConfig.CABundle = nil
		if _, err := api.Update(ctx, mwc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c.replicas[1].Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		mwc, err = api.Get(ctx, testWebhookConfig, metav1.GetOptions{})
		if err != nil || string(mwc.Webhooks[0].ClientConfig.CABundle) != string(want) {
			t.Errorf("caBundle not restored (%v)", err)
		}
	})

	t.Run("reinvocation after another webhook injects once", func(t *testing.T) {
		api := c.cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
		ours, err := api.Get(ctx, testWebhookConfig, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		url := c.url + "/label"
		labeler := ours.DeepCopy()
		labeler.ObjectMeta = metav1.ObjectMeta{Name: "zz-labeler"} // called after sidekey-webhook
		labeler.Webhooks[0].Name = "label.example.com"
		labeler.Webhooks[0].ClientConfig.URL = &url
		labeler.Webhooks[0].MatchConditions = nil
		never := admregv1.NeverReinvocationPolicy
		labeler.Webhooks[0].ReinvocationPolicy = &never
		if _, err := api.Create(ctx, labeler, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = api.Delete(ctx, "zz-labeler", metav1.DeleteOptions{}) }()
		deadline := time.Now().Add(30 * time.Second)
		for i := 0; ; i++ {
			name := fmt.Sprintf("reinvoked-%d", i)
			p, err := pods.Create(ctx, testPod(name, map[string]string{KeyInject: "true", KeyVaultRole: "web", KeySecret + "db": "vault:database/creds/web"}), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if p.Labels["labeled-by"] != "zz" {
				if time.Now().After(deadline) {
					t.Fatal("the labelling webhook was never called")
				}
				time.Sleep(200 * time.Millisecond)
				continue
			}
			n, _ := c.calls.Load(name)
			if calls := n.(*atomic.Int32).Load(); calls < 2 {
				t.Errorf("our webhook was called %d times for %s; want a reinvocation", calls, name)
			}
			agents := 0
			for _, ctr := range append(p.Spec.InitContainers, p.Spec.Containers...) {
				if strings.HasPrefix(ctr.Name, spec.AgentContainer) {
					agents++
				}
			}
			if agents != 1 || len(p.Spec.Volumes) != 2 {
				t.Errorf("after reinvocation: %d agent containers, %d volumes; want 1 and 2", agents, len(p.Spec.Volumes))
			}
			break
		}
	})

	t.Run("already injected pod is left alone", func(t *testing.T) {
		first, err := pods.Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		again := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-copy", Annotations: first.Annotations}, Spec: first.Spec}
		again.Spec.NodeName = ""
		p, err := pods.Create(ctx, again, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Spec.InitContainers) != 1 || len(p.Spec.Volumes) != len(first.Spec.Volumes) {
			t.Errorf("second injection: %d init containers, %d volumes; want 1 and %d", len(p.Spec.InitContainers), len(p.Spec.Volumes), len(first.Spec.Volumes))
		}
	})
}

func specOf(t *testing.T, p *corev1.Pod) *spec.Spec {
	t.Helper()
	for _, e := range p.Spec.InitContainers[0].Env {
		if e.Name == spec.EnvVar {
			s, err := spec.Decode([]byte(e.Value))
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	t.Fatalf("no %s in the first init container", spec.EnvVar)
	return nil
}

func hasMount(c corev1.Container, vol, path string, ro bool) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == vol && m.MountPath == path && m.ReadOnly == ro {
			return true
		}
	}
	return false
}

// TestAPIServerTLSRotation rotates the self-managed CA and serving certificate several times
// while pods are created without pause, served by two replicas in turn: no creation may fail.
func TestAPIServerTLSRotation(t *testing.T) {
	c := startCluster(t, func(m *SelfManagedTLS) {
		m.CALifetime, m.CertLifetime, m.Propagation, m.Interval = 9*time.Second, 4*time.Second, time.Second, 150*time.Millisecond
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for _, r := range c.replicas {
		go r.Run(ctx)
	}
	pods := c.cs.CoreV1().Pods(c.ns)
	var (
		created, failed atomic.Int64
		mu              sync.Mutex
		errs            []string
		wg              sync.WaitGroup
	)
	stop := time.Now().Add(22 * time.Second)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(stop); i++ {
				p, err := pods.Create(ctx, testPod(fmt.Sprintf("rot-%d-%d", w, i), map[string]string{
					KeyInject: "true", KeyVaultRole: "app", KeySecret + "a": "vault:secret/data/a#k"}), metav1.CreateOptions{})
				if err == nil && p.Annotations[KeyStatus] != spec.StatusInjected {
					err = fmt.Errorf("pod %s stored without injection", p.Name)
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					errs = append(errs, err.Error())
					mu.Unlock()
					continue
				}
				created.Add(1)
			}
		}()
	}
	wg.Wait()
	issuers := map[string]bool{}
	leaves := 0
	c.leaves.Range(func(_, issuer any) bool {
		leaves++
		issuers[issuer.(string)] = true
		return true
	})
	t.Logf("%d pods created, %d failed; %d serving certificates from %d CAs were served", created.Load(), failed.Load(), leaves, len(issuers))
	if failed.Load() > 0 {
		t.Errorf("%d creations failed during rotation; first: %s", failed.Load(), errs[0])
	}
	if len(issuers) < 3 || leaves < 5 {
		t.Errorf("served %d certificates from %d CAs; want rotation to have happened (>= 5 from >= 3)", leaves, len(issuers))
	}
	if created.Load() < 50 {
		t.Errorf("only %d pods created", created.Load())
	}
}
