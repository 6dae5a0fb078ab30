// Package injector turns a pod that asks for secrets with sidekey.io/* annotations into one that
// runs sidekey-agent: the annotation grammar (annotations.go), the pure pod mutation (this file),
// the admission webhook around it (webhook.go), its TLS (certs.go) and offline injection of
// manifests (manifests.go).
package injector

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sidekey/sidekey/injector/spec"
	"github.com/sidekey/sidekey/internal/version"
)

// Names of the volumes only the agent mounts, and where.
const (
	VaultTokenVolume = "sidekey-vault-token"
	VaultCAVolume    = "sidekey-vault-ca"
	AWSTokenVolume   = "sidekey-aws-token"
	vaultTokenDir    = "/var/run/secrets/sidekey.io/vault"
	vaultCADir       = "/var/run/secrets/sidekey.io/vault-ca"
	awsTokenDir      = "/var/run/secrets/sidekey.io/aws"
	tokenFile        = "token"
	awsAudience      = "sts.amazonaws.com"
)

// DefaultAgentUID is the agent's user when the app's is unknown or root (distroless "nonroot").
const DefaultAgentUID = 65532

// Config is the cluster-wide part of the mutation: the flags of `sidekey webhook` and `sidekey inject`.
type Config struct {
	AgentImage string
	// Resources of the agent containers; annotations override single values.
	Resources corev1.ResourceRequirements
	// NativeSidecars puts the agent first in initContainers with restartPolicy Always (Kubernetes ≥ 1.29).
	NativeSidecars bool
	VaultAddr      string // default for pods without sidekey.io/vault-addr
	VaultAuthPath  string
	VaultAudience  string
	// TokenExpiration is the lifetime of the projected service-account tokens (at least 10m).
	TokenExpiration time.Duration
	TmpfsSizeLimit  resource.Quantity
	// AgentUID is the agent's user when the target container's is unknown or root.
	AgentUID int64
	// AgentEnv is extra environment for the agent containers (e.g. SIDEKEY_LOG_FORMAT).
	AgentEnv []corev1.EnvVar
}

// DefaultConfig returns the defaults of the webhook's flags.
func DefaultConfig() Config {
	return Config{
		AgentImage: "ghcr.io/sidekey/sidekey-agent:" + version.Version,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		},
		NativeSidecars:  true,
		VaultAuthPath:   "auth/kubernetes",
		VaultAudience:   "vault",
		TokenExpiration: time.Hour,
		TmpfsSizeLimit:  resource.MustParse("4Mi"),
		AgentUID:        DefaultAgentUID,
	}
}

// Facts are what the caller knows about a pod beyond its manifest.
type Facts struct {
	// OwnerKind is the kind of the workload that makes the pod, for pods that carry no
	// ownerReferences yet (offline: "Job" for Jobs and CronJobs).
	OwnerKind string
	// ServiceAccountRoleARN is the eks.amazonaws.com/role-arn of the pod's ServiceAccount.
	ServiceAccountRoleARN string
}

// Result is the outcome of Mutate.
type Result struct {
	// Pod is a mutated copy when Injected; the input pod otherwise.
	Pod      *corev1.Pod
	Injected bool
	// Spec is what the agent was told (nil unless Injected).
	Spec *spec.Spec
	// Warnings are shown to the user (kubectl prints them) without refusing the pod.
	Warnings []string
}

// ErrConflict is wrapped when the pod already holds something the injector adds.
var ErrConflict = errors.New("pod conflicts with sidekey")

// Mutate injects the agent into a pod that opts in with sidekey.io/inject: "true". It is pure
// (no I/O; pod is not modified) and idempotent: a pod already marked sidekey.io/status: injected
// comes back unchanged. An error names the annotation to fix; the webhook refuses such pods.
func Mutate(pod *corev1.Pod, cfg *Config, facts Facts) (Result, error) {
	if !hasPrefixedKey(pod.Annotations) {
		return Result{Pod: pod}, nil
	}
	s, err := parseAnnotations(pod.Annotations)
	if err != nil {
		return Result{Pod: pod}, err
	}
	if !s.injectSet {
		if len(s.declared) > 0 {
			return Result{Pod: pod}, fmt.Errorf("%w: %s: missing, but the pod declares %s; add %s: \"true\" (or \"false\" to opt out)",
				ErrAnnotation, KeyInject, strings.Join(s.declared, ", "), KeyInject)
		}
		return Result{Pod: pod}, nil
	}
	if !s.inject {
		return Result{Pod: pod}, nil
	}
	injected := hasContainer(pod.Spec.InitContainers, spec.AgentContainer, spec.AgentInitContainer) ||
		hasContainer(pod.Spec.Containers, spec.AgentContainer, spec.AgentInitContainer)
	if s.status == spec.StatusInjected {
		if !injected {
			return Result{Pod: pod}, fmt.Errorf("%w: %s: %q but the pod has no %s container; remove the annotation, the webhook sets it",
				ErrAnnotation, KeyStatus, s.status, spec.AgentContainer)
		}
		return Result{Pod: pod}, nil
	}
	if pod.Annotations[KeySharedProcessNS] != "" {
		return Result{Pod: pod}, fmt.Errorf("%w: %s: written by the webhook only; remove it", ErrAnnotation, KeySharedProcessNS)
	}
	if injected {
		return Result{Pod: pod}, fmt.Errorf("%w: a container is already named %s or %s; rename it", ErrConflict, spec.AgentContainer, spec.AgentInitContainer)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == spec.VolumeName || v.Name == VaultTokenVolume || v.Name == VaultCAVolume || v.Name == AWSTokenVolume {
			return Result{Pod: pod}, fmt.Errorf("%w: volume %q is reserved for sidekey; rename it", ErrConflict, v.Name)
		}
	}
	p, err := newPlan(pod, cfg, facts, s)
	if err != nil {
		return Result{Pod: pod}, err
	}
	out := pod.DeepCopy()
	p.apply(out)
	return Result{Pod: out, Injected: true, Spec: p.spec, Warnings: p.warnings}, nil
}

func hasPrefixedKey(m map[string]string) bool {
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

func hasContainer(cs []corev1.Container, names ...string) bool {
	for _, c := range cs {
		if slices.Contains(names, c.Name) {
			return true
		}
	}
	return false
}

// plan is everything Mutate adds, worked out and checked before the pod is touched.
type plan struct {
	spec        *spec.Spec
	specJSON    string
	native      bool
	targets     map[string]bool // container names that mount the tmpfs
	sharePID    bool
	image       string
	resources   corev1.ResourceRequirements
	runAs       corev1.SecurityContext
	tmpfsSize   resource.Quantity
	vaultAud    string
	vaultCA     *caSource
	tokenExpiry int64
	awsRole     string
	initTimeout time.Duration
	env         []corev1.EnvVar
	warnings    []string
}

func newPlan(pod *corev1.Pod, cfg *Config, facts Facts, s *settings) (*plan, error) {
	var errs problems
	bad := errs.add
	p := &plan{native: cfg.NativeSidecars, targets: map[string]bool{}, image: cfg.AgentImage,
		tmpfsSize: cfg.TmpfsSizeLimit, initTimeout: s.initTimeout, env: cfg.AgentEnv}
	if len(s.secrets) == 0 {
		bad(KeyInject, `"true" but no %s<name> or %s<name> says what to fetch`, KeySecret, KeyTemplate)
	}

	// Which containers get the files.
	all := make([]string, 0, len(pod.Spec.Containers)+len(pod.Spec.InitContainers))
	for _, c := range pod.Spec.Containers {
		all = append(all, c.Name)
	}
	for _, c := range pod.Spec.InitContainers {
		all = append(all, c.Name)
	}
	targets := s.containers
	if targets == nil {
		targets = all[:len(pod.Spec.Containers)]
	}
	for _, t := range targets {
		if !slices.Contains(all, t) {
			bad(KeyContainers, "no container %q in the pod (it has %s)", t, strings.Join(all, ", "))
		}
		p.targets[t] = true
	}

	// Mode: init-only for Jobs so they complete.
	mode := s.mode
	owner := facts.OwnerKind
	for _, ref := range pod.OwnerReferences {
		if ref.Controller != nil && *ref.Controller {
			owner = ref.Kind
		}
	}
	if mode == "" {
		mode = spec.ModeSidecar
		if owner == "Job" {
			mode = spec.ModeInitOnly
		}
	} else if mode == spec.ModeSidecar && owner == "Job" && !p.native {
		p.warnings = append(p.warnings, fmt.Sprintf("%s: sidecar in a Job's pod keeps the pod running after the job's containers exit on clusters without native sidecars; consider init-only", KeyMode))
	}

	sp := &spec.Spec{Version: spec.Version, MountPath: s.mountPath, Mode: mode, OnChange: s.onChange, HealthAddr: spec.DefaultHealthAddr}
	if mode == spec.ModeSidecar {
		sp.Refresh = spec.Duration(s.refresh)
	}
	errs = append(errs, p.backends(sp, cfg, facts, s)...)

	// on-change signal: the agent must see the app's processes.
	if oc := s.onChange; oc.Kind == spec.OnChangeSignal {
		if !slices.Contains(all[:len(pod.Spec.Containers)], oc.Container) {
			bad(KeyOnChange, "no app container %q to signal (the pod has %s)", oc.Container, strings.Join(all[:len(pod.Spec.Containers)], ", "))
		}
		if pod.Spec.ShareProcessNamespace == nil || !*pod.Spec.ShareProcessNamespace {
			p.sharePID = true
		}
	}

	fileUID, fileGID, warnings := p.ownership(pod, cfg, s)
	p.warnings = append(p.warnings, warnings...)
	if pod.Spec.HostNetwork {
		p.warnings = append(p.warnings, fmt.Sprintf("hostNetwork: the agent's health address %s is the node's loopback, so two such pods on one node collide", spec.DefaultHealthAddr))
	}
	for _, sec := range s.secrets {
		out := spec.Secret{Name: sec.name, File: sec.file, Mode: sec.mode, UID: fileUID, GID: fileGID}
		if sec.source != nil {
			src := *sec.source
			out.Source = &src
		} else {
			out.Template, out.Sources = sec.template, sec.sources
		}
		sp.Secrets = append(sp.Secrets, out)
	}

	// Agent image, resources, tmpfs, token lifetime.
	p.image = firstNonEmpty(s.agentImage, p.image)
	if p.image == "" {
		bad(KeyAgentImage, "missing: the webhook has no --agent-image")
	}
	p.resources = cfg.Resources // copied where the agent container takes it
	if len(s.resources) > 0 {
		p.resources = *cfg.Resources.DeepCopy()
	}
	for key, q := range s.resources {
		list, name := &p.resources.Requests, corev1.ResourceCPU
		switch key {
		case KeyAgentMemoryRequest:
			name = corev1.ResourceMemory
		case KeyAgentCPULimit:
			list = &p.resources.Limits
		case KeyAgentMemoryLimit:
			list, name = &p.resources.Limits, corev1.ResourceMemory
		}
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		(*list)[name] = q
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okR := p.resources.Requests[name]
		lim, okL := p.resources.Limits[name]
		if okR && okL && req.Cmp(lim) > 0 {
			bad(prefix+"agent-"+string(name)+"-request", "%s is above the limit %s", req.String(), lim.String())
		}
	}
	if s.tmpfsSize != nil {
		p.tmpfsSize = *s.tmpfsSize
	}
	exp := cfg.TokenExpiration
	if exp < 10*time.Minute {
		exp = time.Hour
	}
	p.tokenExpiry = int64(exp / time.Second)

	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrAnnotation, errors.Join(errs...))
	}
	if err := sp.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAnnotation, err)
	}
	b, err := json.Marshal(sp)
	if err != nil {
		return nil, fmt.Errorf("encode agent spec: %w", err)
	}
	p.spec, p.specJSON = sp, string(b)
	return p, nil
}

// backends fills in how the agent reaches Vault and AWS, for the backends the secrets read.
func (p *plan) backends(sp *spec.Spec, cfg *Config, facts Facts, s *settings) []error {
	var errs problems
	bad := errs.add
	var usesVault, usesAWS bool
	arnRegion := ""
	for _, sec := range s.secrets {
		for _, src := range secretSources(sec) {
			switch src.Backend {
			case spec.BackendVault:
				usesVault = true
			case spec.BackendAWSSM, spec.BackendAWSSSM:
				usesAWS = true
				if parts := strings.Split(src.Path, ":"); len(parts) > 4 && strings.HasPrefix(src.Path, "arn:") && arnRegion == "" {
					arnRegion = parts[3]
				}
			}
		}
	}
	if usesVault {
		v := s.vault
		v.Addr = firstNonEmpty(v.Addr, cfg.VaultAddr)
		v.AuthPath = firstNonEmpty(v.AuthPath, cfg.VaultAuthPath, "auth/kubernetes")
		v.TokenPath = path.Join(vaultTokenDir, tokenFile)
		if v.Addr == "" {
			bad(KeyVaultAddr, "missing: a secret reads from vault and the webhook has no --vault-addr default")
		}
		if v.Role == "" {
			bad(KeyVaultRole, "missing: a secret reads from vault; name the Vault Kubernetes auth role")
		}
		if s.vaultCA != nil {
			v.CACertPath = path.Join(vaultCADir, "ca.crt")
			p.vaultCA = s.vaultCA
		}
		sp.Vault = &v
		p.vaultAud = firstNonEmpty(s.vaultAudience, cfg.VaultAudience, "vault")
	}
	if usesAWS {
		a := &spec.AWS{Region: firstNonEmpty(s.awsRegion, arnRegion)}
		if a.Region == "" {
			bad(KeyAWSRegion, "missing: a secret reads from aws-sm or aws-ssm; name the region such as eu-west-1")
		}
		a.RoleARN = s.awsRole
		if a.RoleARN == "" && facts.ServiceAccountRoleARN != "" {
			if !roleARNRE.MatchString(facts.ServiceAccountRoleARN) {
				bad(KeyAWSRoleARN, "missing, and the ServiceAccount's %s %q is not an IAM role ARN", ServiceAccountRoleARN, facts.ServiceAccountRoleARN)
			}
			a.RoleARN = facts.ServiceAccountRoleARN
		}
		if a.RoleARN != "" {
			a.TokenPath = path.Join(awsTokenDir, tokenFile)
			p.awsRole = a.RoleARN
		}
		sp.AWS = a
	}

	return errs
}

// ownership decides who owns the files and whom the agent runs as: the user of the container
// that reads them (or is signalled), so a non-root app reads 0400 files without extra settings,
// and the pod's fsGroup (else that container's group). It sets p.runAs and returns the files'
// owner, with warnings where it cannot tell.
func (p *plan) ownership(pod *corev1.Pod, cfg *Config, s *settings) (fileUID, fileGID *int64, warnings []string) {
	ownerName := ""
	if s.onChange.Kind == spec.OnChangeSignal {
		ownerName = s.onChange.Container
	} else {
	find:
		for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
			for i := range cs {
				if p.targets[cs[i].Name] {
					ownerName = cs[i].Name
					break find
				}
			}
		}
	}
	uid, gid := effectiveIDs(pod, ownerName)
	if s.runAsUser != nil {
		uid = s.runAsUser
	}
	agentUID := cfg.AgentUID
	if agentUID == 0 {
		agentUID = DefaultAgentUID
	}
	if uid != nil && *uid != 0 {
		fileUID, agentUID = uid, *uid
	}
	agentGID := agentUID
	switch {
	case s.runAsGroup != nil:
		fileGID, agentGID = s.runAsGroup, *s.runAsGroup
	case pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.FSGroup != nil:
		fileGID = pod.Spec.SecurityContext.FSGroup // every container of the pod has it as a supplementary group
		if gid != nil {
			agentGID = *gid
		}
	case gid != nil:
		fileGID, agentGID = gid, *gid
	}
	p.runAs = corev1.SecurityContext{RunAsUser: &agentUID, RunAsGroup: &agentGID}

	explicitModes := true
	for _, sec := range s.secrets {
		explicitModes = explicitModes && sec.modeSet
	}
	if explicitModes || ownerName == "" {
		return fileUID, fileGID, nil
	}
	if uid == nil {
		warnings = append(warnings, fmt.Sprintf("container %q sets no runAsUser, so sidekey cannot tell who reads the files (mode 0400, owner %d); set securityContext.runAsUser or %s", ownerName, agentUID, KeyRunAsUser))
	}
	for _, c := range pod.Spec.Containers {
		if other, _ := effectiveIDs(pod, c.Name); p.targets[c.Name] && c.Name != ownerName && other != nil && uid != nil && *other != *uid && *other != 0 {
			warnings = append(warnings, fmt.Sprintf("containers %q and %q run as different users; the files belong to user %d; give both a pod fsGroup and %s<name>: \"0440\"", ownerName, c.Name, *uid, KeyFileMode))
		}
	}
	return fileUID, fileGID, warnings
}

func secretSources(s *secretSettings) []spec.Source {
	if s.source != nil {
		return []spec.Source{*s.source}
	}
	return s.sources
}

// effectiveIDs returns a container's runAsUser and runAsGroup, the container's own overriding the pod's.
func effectiveIDs(pod *corev1.Pod, name string) (uid, gid *int64) {
	if psc := pod.Spec.SecurityContext; psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
	}
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			if c.Name == name && c.SecurityContext != nil {
				if c.SecurityContext.RunAsUser != nil {
					uid = c.SecurityContext.RunAsUser
				}
				if c.SecurityContext.RunAsGroup != nil {
					gid = c.SecurityContext.RunAsGroup
				}
			}
		}
	}
	return uid, gid
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// apply adds the plan to pod, which is a copy owned by the caller.
func (p *plan) apply(pod *corev1.Pod) {
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[KeyStatus] = spec.StatusInjected
	if p.sharePID {
		t := true
		pod.Spec.ShareProcessNamespace = &t
		pod.Annotations[KeySharedProcessNS] = "true"
	}

	size := p.tmpfsSize
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: spec.VolumeName,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &size}}})
	mounts := []corev1.VolumeMount{{Name: spec.VolumeName, MountPath: p.spec.MountPath}}
	if (p.spec.Vault != nil || p.awsRole != "") && pod.Spec.ServiceAccountName == "" {
		// Projected tokens need a named account; the ServiceAccount admission plugin would
		// name "default" too, but it may run after us or not at all.
		pod.Spec.ServiceAccountName = firstNonEmpty(pod.Spec.DeprecatedServiceAccount, "default")
	}
	if p.spec.Vault != nil {
		pod.Spec.Volumes = append(pod.Spec.Volumes, tokenVolume(VaultTokenVolume, p.vaultAud, p.tokenExpiry))
		mounts = append(mounts, corev1.VolumeMount{Name: VaultTokenVolume, MountPath: vaultTokenDir, ReadOnly: true})
		if ca := p.vaultCA; ca != nil {
			items := []corev1.KeyToPath{{Key: ca.key, Path: "ca.crt"}}
			vs := corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: ca.name, Items: items}}
			if ca.kind == "configmap" {
				vs = corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: ca.name}, Items: items}}
			}
			pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: VaultCAVolume, VolumeSource: vs})
			mounts = append(mounts, corev1.VolumeMount{Name: VaultCAVolume, MountPath: vaultCADir, ReadOnly: true})
		}
	}
	if p.awsRole != "" {
		pod.Spec.Volumes = append(pod.Spec.Volumes, tokenVolume(AWSTokenVolume, awsAudience, p.tokenExpiry))
		mounts = append(mounts, corev1.VolumeMount{Name: AWSTokenVolume, MountPath: awsTokenDir, ReadOnly: true})
	}

	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if p.targets[cs[i].Name] {
				cs[i].VolumeMounts = withMount(cs[i].VolumeMounts, corev1.VolumeMount{Name: spec.VolumeName, MountPath: p.spec.MountPath, ReadOnly: true})
			}
			if p.targets[cs[i].Name] || (p.spec.OnChange.Kind == spec.OnChangeSignal && p.spec.OnChange.Container == cs[i].Name) {
				// the agent finds the process to signal by this marker in /proc/<pid>/environ
				cs[i].Env = withEnv(cs[i].Env, corev1.EnvVar{Name: spec.ContainerEnv, Value: cs[i].Name})
			}
		}
	}

	var first corev1.Container
	switch {
	case p.native && p.spec.Mode == spec.ModeSidecar:
		first = p.container(spec.AgentContainer, nil, mounts)
		always := corev1.ContainerRestartPolicyAlways
		first.RestartPolicy = &always
		first.StartupProbe = &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{spec.AgentPath, "--check-ready"}}},
			PeriodSeconds:    1,
			TimeoutSeconds:   2,
			FailureThreshold: int32(p.initTimeout/time.Second) + 5,
		}
	default:
		first = p.container(spec.AgentInitContainer, []string{"--once"}, mounts)
	}
	pod.Spec.InitContainers = append([]corev1.Container{first}, pod.Spec.InitContainers...)
	if !p.native && p.spec.Mode == spec.ModeSidecar {
		pod.Spec.Containers = append(pod.Spec.Containers, p.container(spec.AgentContainer, nil, mounts))
	}
}

// container builds one agent container.
func (p *plan) container(name string, args []string, mounts []corev1.VolumeMount) corev1.Container {
	no, yes := false, true
	env := []corev1.EnvVar{
		{Name: spec.EnvVar, Value: p.specJSON},
		{Name: "SIDEKEY_INIT_TIMEOUT", Value: p.initTimeout.String()},
	}
	if p.spec.AWS != nil {
		env = append(env, corev1.EnvVar{Name: "AWS_REGION", Value: p.spec.AWS.Region})
		if p.awsRole != "" {
			env = append(env,
				corev1.EnvVar{Name: "AWS_ROLE_ARN", Value: p.awsRole},
				corev1.EnvVar{Name: "AWS_WEB_IDENTITY_TOKEN_FILE", Value: p.spec.AWS.TokenPath},
				corev1.EnvVar{Name: "AWS_STS_REGIONAL_ENDPOINTS", Value: "regional"})
		}
	}
	env = append(env, p.env...)
	sc := p.runAs.DeepCopy()
	sc.RunAsNonRoot = &yes
	sc.ReadOnlyRootFilesystem = &yes
	sc.AllowPrivilegeEscalation = &no
	sc.Privileged = &no
	sc.Capabilities = &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}
	sc.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	return corev1.Container{
		Name:                     name,
		Image:                    p.image,
		ImagePullPolicy:          corev1.PullIfNotPresent,
		Command:                  []string{spec.AgentPath},
		Args:                     args,
		Env:                      env,
		Resources:                *p.resources.DeepCopy(),
		VolumeMounts:             slices.Clone(mounts),
		SecurityContext:          sc,
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

func tokenVolume(name, audience string, expiry int64) corev1.Volume {
	// Default file mode (0644): only the agent containers mount it.
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: audience, ExpirationSeconds: &expiry, Path: tokenFile,
		}}},
	}}}
}

// withMount replaces any mount of m.MountPath by m, or appends it.
func withMount(ms []corev1.VolumeMount, m corev1.VolumeMount) []corev1.VolumeMount {
	out := ms[:0:0]
	for _, x := range ms {
		if path.Clean(x.MountPath) != m.MountPath {
			out = append(out, x)
		}
	}
	return append(out, m)
}

// withEnv replaces any variable named e.Name by e, or appends it.
func withEnv(env []corev1.EnvVar, e corev1.EnvVar) []corev1.EnvVar {
	out := env[:0:0]
	for _, x := range env {
		if x.Name != e.Name {
			out = append(out, x)
		}
	}
	return append(out, e)
}
