package injector

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sidekey/sidekey/injector/spec"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// testConfig is the webhook configuration the golden files were made with.
func testConfig() Config {
	c := DefaultConfig()
	c.AgentImage = "ghcr.io/sidekey/sidekey-agent:test"
	c.VaultAddr = "https://vault.vault.svc:8200"
	return c
}

// readCase reads a testdata/*.pod.yaml: "# config: k=v ..." header lines set the config and facts.
func readCase(t *testing.T, file string) (*corev1.Pod, Config, Facts) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cfg, facts := testConfig(), Facts{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "# config:")
		if !ok {
			continue
		}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "native":
				cfg.NativeSidecars = v == "true"
			case "owner":
				facts.OwnerKind = v
			case "sa-role-arn":
				facts.ServiceAccountRoleARN = v
			case "vault-addr":
				cfg.VaultAddr = v
			default:
				t.Fatalf("%s: unknown config %q", file, k)
			}
		}
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(b, &pod); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return &pod, cfg, facts
}

// render is the golden form of a Mutate result: warnings and errors as comments, then the pod.
func render(t *testing.T, res Result, err error) []byte {
	t.Helper()
	var out bytes.Buffer
	if err != nil {
		out.WriteString("# refused:\n")
		for _, line := range strings.Split(err.Error(), "\n") {
			out.WriteString("#   " + line + "\n")
		}
		return out.Bytes()
	}
	if !res.Injected {
		out.WriteString("# unchanged\n")
		return out.Bytes()
	}
	for _, w := range res.Warnings {
		out.WriteString("# warning: " + w + "\n")
	}
	b, err := yaml.Marshal(res.Pod)
	if err != nil {
		t.Fatal(err)
	}
	out.Write(b)
	return out.Bytes()
}

func TestMutateGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.pod.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/*.pod.yaml: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".pod.yaml")
		t.Run(name, func(t *testing.T) {
			pod, cfg, facts := readCase(t, file)
			before := pod.DeepCopy()
			res, err := Mutate(pod, &cfg, facts)
			if d := cmp.Diff(before, pod); d != "" {
				t.Fatalf("Mutate modified its input (-before +after):\n%s", d)
			}
			got := render(t, res, err)
			golden := strings.TrimSuffix(file, ".pod.yaml") + ".golden.yaml"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, rerr := os.ReadFile(golden)
			if rerr != nil {
				t.Fatalf("%v (run go test ./injector -run TestMutateGolden -update)", rerr)
			}
			if d := cmp.Diff(string(want), string(got)); d != "" {
				t.Errorf("Mutate(%s) differs from %s (-want +got):\n%s", file, golden, d)
			}
			if err != nil {
				if !errors.Is(err, ErrAnnotation) && !errors.Is(err, ErrConflict) {
					t.Errorf("error %v wraps neither ErrAnnotation nor ErrConflict", err)
				}
				return
			}
			if !res.Injected {
				if res.Pod != pod {
					t.Errorf("unchanged result is not the input pod")
				}
				return
			}
			checkInjected(t, res)
			// Idempotent: a second pass (reinvocationPolicy IfNeeded) changes nothing.
			again, err := Mutate(res.Pod, &cfg, facts)
			if err != nil || again.Injected {
				t.Fatalf("second Mutate = injected %v, %v; want a no-op", again.Injected, err)
			}
		})
	}
}

// checkInjected checks the invariants every injected pod must hold.
func checkInjected(t *testing.T, res Result) {
	t.Helper()
	pod := res.Pod
	if pod.Annotations[spec.AnnotationStatus] != spec.StatusInjected {
		t.Errorf("status annotation = %q", pod.Annotations[spec.AnnotationStatus])
	}
	var vol *corev1.Volume
	for i, v := range pod.Spec.Volumes {
		if v.Name == spec.VolumeName {
			vol = &pod.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.EmptyDir == nil || vol.EmptyDir.Medium != corev1.StorageMediumMemory || vol.EmptyDir.SizeLimit == nil {
		t.Fatalf("volume %s = %+v; want a sized emptyDir with medium Memory", spec.VolumeName, vol)
	}
	agents := 0
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			isAgent := c.Name == spec.AgentContainer || c.Name == spec.AgentInitContainer
			for _, m := range c.VolumeMounts {
				if (m.Name == VaultTokenVolume || m.Name == AWSTokenVolume) && !isAgent {
					t.Errorf("container %s mounts the token volume %s", c.Name, m.Name)
				}
				if m.Name == spec.VolumeName && !isAgent && !m.ReadOnly {
					t.Errorf("container %s mounts the tmpfs read-write", c.Name)
				}
			}
			if !isAgent {
				continue
			}
			agents++
			sc := c.SecurityContext
			if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 ||
				sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 ||
				sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("agent %s securityContext = %+v; want non-root, read-only root, no escalation, no capabilities, RuntimeDefault seccomp", c.Name, sc)
			}
			var js string
			for _, e := range c.Env {
				if e.Name == spec.EnvVar {
					js = e.Value
				}
				if e.ValueFrom != nil {
					t.Errorf("agent env %s uses valueFrom", e.Name)
				}
			}
			s, err := spec.Decode([]byte(js))
			if err != nil {
				t.Fatalf("agent %s spec: %v", c.Name, err)
			}
			if d := cmp.Diff(res.Spec, s); d != "" {
				t.Errorf("agent %s spec differs from Result.Spec:\n%s", c.Name, d)
			}
		}
	}
	if pod.Spec.InitContainers[0].Name != spec.AgentContainer && pod.Spec.InitContainers[0].Name != spec.AgentInitContainer {
		t.Errorf("first init container = %s; want the agent", pod.Spec.InitContainers[0].Name)
	}
	if agents == 0 || agents > 2 {
		t.Errorf("%d agent containers", agents)
	}
}

func TestMutateModes(t *testing.T) {
	yes := true
	base := func() *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: map[string]string{
				KeyInject: "true", KeyVaultRole: "r", KeySecret + "a": "vault:secret/data/a#k"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}
	}
	jobPod := base()
	jobPod.OwnerReferences = []metav1.OwnerReference{{Kind: "Job", Name: "j", Controller: &yes}}
	explicit := base()
	explicit.Annotations[KeyMode] = spec.ModeInitOnly
	tests := []struct {
		name       string
		pod        *corev1.Pod
		native     bool
		facts      Facts
		wantInit   []string
		wantApp    []string
		wantMode   string
		wantAlways bool
	}{
		{"native sidecar", base(), true, Facts{}, []string{"sidekey-agent"}, []string{"app"}, spec.ModeSidecar, true},
		{"legacy sidecar", base(), false, Facts{}, []string{"sidekey-agent-init"}, []string{"app", "sidekey-agent"}, spec.ModeSidecar, false},
		{"job native", jobPod, true, Facts{}, []string{"sidekey-agent-init"}, []string{"app"}, spec.ModeInitOnly, false},
		{"job legacy", jobPod, false, Facts{}, []string{"sidekey-agent-init"}, []string{"app"}, spec.ModeInitOnly, false},
		{"job template offline", base(), true, Facts{OwnerKind: "Job"}, []string{"sidekey-agent-init"}, []string{"app"}, spec.ModeInitOnly, false},
		{"explicit init-only", explicit, true, Facts{}, []string{"sidekey-agent-init"}, []string{"app"}, spec.ModeInitOnly, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.NativeSidecars = tt.native
			res, err := Mutate(tt.pod, &cfg, tt.facts)
			if err != nil {
				t.Fatal(err)
			}
			var init, app []string
			for _, c := range res.Pod.Spec.InitContainers {
				init = append(init, c.Name)
			}
			for _, c := range res.Pod.Spec.Containers {
				app = append(app, c.Name)
			}
			if d := cmp.Diff(tt.wantInit, init); d != "" {
				t.Errorf("init containers (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.wantApp, app); d != "" {
				t.Errorf("containers (-want +got):\n%s", d)
			}
			if res.Spec.Mode != tt.wantMode {
				t.Errorf("mode = %s; want %s", res.Spec.Mode, tt.wantMode)
			}
			first := res.Pod.Spec.InitContainers[0]
			always := first.RestartPolicy != nil && *first.RestartPolicy == corev1.ContainerRestartPolicyAlways
			if always != tt.wantAlways {
				t.Errorf("restartPolicy Always = %v; want %v", always, tt.wantAlways)
			}
			if always && (first.StartupProbe == nil || first.StartupProbe.Exec == nil ||
				!cmp.Equal(first.StartupProbe.Exec.Command, []string{spec.AgentPath, "--check-ready"})) {
				t.Errorf("native sidecar startupProbe = %+v", first.StartupProbe)
			}
			if !always && !cmp.Equal(first.Args, []string{"--once"}) {
				t.Errorf("init agent args = %q; want --once", first.Args)
			}
		})
	}
}

func TestMutateRefuses(t *testing.T) {
	tests := []struct {
		name    string
		ann     map[string]string
		pod     func(*corev1.Pod)
		wantErr []string
	}{
		{"unknown key", map[string]string{KeyInject: "true", KeyVaultRole: "r", KeySecret + "a": "vault:a", prefix + "vault-rol": "r"},
			nil, []string{"sidekey.io/vault-rol: unknown sidekey annotation; did you mean sidekey.io/vault-role?"}},
		{"bad source", map[string]string{KeyInject: "true", KeySecret + "a": "gcp:a"}, nil, []string{"sidekey.io/secret.a:", "unknown backend"}},
		{"bad template", map[string]string{KeyInject: "true", KeyVaultRole: "r", KeyTemplate + "a": "{{ secret .x }}"}, nil, []string{"sidekey.io/template.a:", "quoted source"}},
		{"both secret and template", map[string]string{KeyInject: "true", KeyVaultRole: "r", KeySecret + "a": "vault:a", KeyTemplate + "a": `{{ secret "vault:b" }}`}, nil, []string{"keep one"}},
		{"orphan file", map[string]string{KeyInject: "true", KeyVaultRole: "r", KeySecret + "a": "vault:a", KeyFile + "b": "b"}, nil, []string{`declares secret "b"`}},
		{"escape", map[string]string{KeyInject: "true", KeyVaultRole: "r", KeySecret + "a": "vault:a", KeyFile + "a": "../../etc/x"}, nil, []string{"sidekey.io/file.a:", "inside the mount path"}},
		{"same file", map[string]string{KeyInject: "true", KeyVaultRole: "r", KeySecret + "a": "vault:a", KeySecret + "b": "vault:b", KeyFile + "b": "a"}, nil, []string{"also written by"}},
		{"mode", map[string]string{KeyInject: "true", KeySecret + "a": "vault:a", KeyMode: "daemon"}, nil, []string{"sidekey.io/mode:", "sidecar or init-only"}},
		{"file mode", map[string]string{KeyInject: "true", KeySecret + "a": "vault:a", KeyFileMode + "a": "rw"}, nil, []string{"sidekey.io/mode.a:", "octal"}},
		{"duration", map[string]string{KeyInject: "true", KeySecret + "a": "vault:a", KeyRefresh: "10"}, nil, []string{"sidekey.io/refresh:", "duration"}},
		{"inject value", map[string]string{KeyInject: "yes"}, nil, []string{`sidekey.io/inject: "yes": want "true" or "false"`}},
		{"no secrets", map[string]string{KeyInject: "true"}, nil, []string{"says what to fetch"}},
		{"forged status", map[string]string{KeyInject: "true", KeyStatus: "injected", KeySecret + "a": "vault:a"}, nil, []string{"sidekey.io/status:", "no sidekey-agent container"}},
		{"on-change remote", map[string]string{KeyInject: "true", KeySecret + "a": "vault:a", KeyOnChange: "http://example.com:80/x"}, nil, []string{"localhost"}},
		{"on-change signal container", map[string]string{KeyInject: "true", KeyVaultRole: "r", KeySecret + "a": "vault:a", KeyOnChange: "signal:web:HUP"}, nil, []string{`no app container "web"`}},
		{"on-change signal name", map[string]string{KeyInject: "true", KeySecret + "a": "vault:a", KeyOnChange: "signal:app:KILL"}, nil, []string{"SIGKILL"}},
		{"touch outside", map[string]string{KeyInject: "true", KeySecret + "a": "vault:a", KeyOnChange: "touch:/tmp/x"}, nil, []string{"under the mount path"}},
		{"aws no region", map[string]string{KeyInject: "true", KeySecret + "a": "aws-ssm:/x"}, nil, []string{"sidekey.io/aws-region: missing"}},
		{"aws bad role", map[string]string{KeyInject: "true", KeySecret + "a": "aws-ssm:/x", KeyAWSRegion: "eu-west-1", KeyAWSRoleARN: "admin"}, nil, []string{"sidekey.io/aws-role-arn:", "IAM role ARN"}},
		{"vault ca", map[string]string{KeyInject: "true", KeySecret + "a": "vault:a", KeyVaultCACert: "file:/etc/ca.pem"}, nil, []string{"sidekey.io/vault-ca-cert:", "secret:<name>"}},
		{"run as root", map[string]string{KeyInject: "true", KeySecret + "a": "vault:a", KeyRunAsUser: "0"}, nil, []string{"other than 0"}},
		{"system mount path", map[string]string{KeyInject: "true", KeySecret + "a": "vault:a", KeyMountPath: "/etc"}, nil, []string{"sidekey.io/mount-path:"}},
		{"agent container exists", map[string]string{KeyInject: "true", KeyVaultRole: "r", KeySecret + "a": "vault:a"},
			func(p *corev1.Pod) {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: spec.AgentContainer})
			}, []string{"already named"}},
		{"reserved volume", map[string]string{KeyInject: "true", KeyVaultRole: "r", KeySecret + "a": "vault:a"},
			func(p *corev1.Pod) { p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: spec.VolumeName}) }, []string{"reserved"}},
		{"typo without inject", map[string]string{prefix + "injetc": "true"}, nil, []string{"did you mean sidekey.io/inject?"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: tt.ann},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
			if tt.pod != nil {
				tt.pod(pod)
			}
			cfg := testConfig()
			_, err := Mutate(pod, &cfg, Facts{})
			if err == nil {
				t.Fatalf("Mutate succeeded; want an error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Mutate error = %q; want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestParseOnChange(t *testing.T) {
	tests := []struct {
		in   string
		want spec.OnChange
	}{
		{"none", spec.OnChange{Kind: "none"}},
		{"signal:app:HUP", spec.OnChange{Kind: "signal", Container: "app", Signal: "SIGHUP"}},
		{"signal:app:sigusr1", spec.OnChange{Kind: "signal", Container: "app", Signal: "SIGUSR1"}},
		{"http://localhost:8080/-/reload", spec.OnChange{Kind: "http", URL: "http://localhost:8080/-/reload"}},
		{"http://127.0.0.1:9000/reload?x=1", spec.OnChange{Kind: "http", URL: "http://127.0.0.1:9000/reload?x=1"}},
		{"touch:/run/secrets/sidekey/reload", spec.OnChange{Kind: "touch", Path: "/run/secrets/sidekey/reload"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseOnChange(tt.in, DefaultMountPath)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("parseOnChange(%q) (-want +got):\n%s", tt.in, d)
			}
		})
	}
	for _, in := range []string{"", "signal:", "signal:app", "signal::HUP", "http://localhost/x", "https://localhost:1/x",
		"http://10.0.0.1:80/x", "http://u:p@localhost:80/", "touch:rel", "touch:/run/secrets/sidekey/../x", "touch:/run/secrets/sidekey/.sidekey-ready", "exec:kill"} {
		if got, err := parseOnChange(in, DefaultMountPath); err == nil {
			t.Errorf("parseOnChange(%q) = %+v; want an error", in, got)
		}
	}
}

func TestAnnotationsTable(t *testing.T) {
	seen := map[string]bool{}
	for _, a := range Annotations() {
		if !strings.HasPrefix(a.Key, prefix) || a.Description == "" {
			t.Errorf("annotation %+v: want a sidekey.io/ key and a description", a)
		}
		if seen[a.Key] {
			t.Errorf("annotation %s listed twice", a.Key)
		}
		seen[a.Key] = true
		// Every documented key is accepted by the parser (no "unknown" error for it).
		key := strings.ReplaceAll(a.Key, "<name>", "x")
		_, err := parseAnnotations(map[string]string{key: "?"})
		if err != nil && strings.Contains(err.Error(), "unknown sidekey annotation") {
			t.Errorf("documented key %s is unknown to the parser: %v", key, err)
		}
	}
}

func FuzzParseAnnotations(f *testing.F) {
	f.Add("sidekey.io/secret.db", "vault:database/creds/app", "sidekey.io/on-change", "signal:app:HUP")
	f.Add("sidekey.io/template.dsn", `{{ secret "vault:a#b" }}`, "sidekey.io/file.dsn", "a/b")
	f.Add("sidekey.io/mode.x", "0400", "sidekey.io/refresh", "1m")
	f.Add("sidekey.io/secrte.x", "aws-sm:arn:aws:x#k@AWSCURRENT", "sidekey.io/mount-path", "/x")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{
			KeyInject: "true", KeyVaultRole: "r", k1: v1, k2: v2}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}
		cfg := testConfig()
		res, err := Mutate(pod, &cfg, Facts{})
		if err != nil {
			if !errors.Is(err, ErrAnnotation) && !errors.Is(err, ErrConflict) {
				t.Fatalf("error %v wraps neither ErrAnnotation nor ErrConflict", err)
			}
			return
		}
		if !res.Injected {
			return
		}
		if err := res.Spec.Validate(); err != nil {
			t.Fatalf("Mutate gave an invalid spec: %v", err)
		}
		again, err := Mutate(res.Pod, &cfg, Facts{})
		if err != nil || again.Injected {
			t.Fatalf("second Mutate = %v, %v; want a no-op", again.Injected, err)
		}
	})
}

// BenchmarkMutate injects into a typical three-container pod.
func BenchmarkMutate(b *testing.B) {
	pod, cfg, facts := readCase(&testing.T{}, "testdata/basic.pod.yaml")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Mutate(pod, &cfg, facts); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAnnotationReference keeps the reference in README.md in step with Annotations().
func TestAnnotationReference(t *testing.T) {
	const begin, end = "<!-- annotations:begin (generated by go test ./injector -run TestAnnotationReference -update) -->\n", "<!-- annotations:end -->\n"
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i, j := strings.Index(readme, begin), strings.Index(readme, end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q ... %q markers", begin, end)
	}
	got := readme[:i+len(begin)] + AnnotationReference() + readme[j:]
	if *update {
		if err := os.WriteFile("README.md", []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if d := cmp.Diff(readme, got); d != "" {
		t.Errorf("README.md annotation reference is stale (run with -update) (-have +want):\n%s", d)
	}
}
