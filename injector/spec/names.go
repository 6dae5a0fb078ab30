package spec

// Names shared by the webhook (which writes them into pods), the agent image, and the probe
// (which finds injected pods and their tmpfs by them).
const (
	// VolumeName is the per-pod tmpfs volume (emptyDir, medium Memory) holding the secret files.
	// The kubelet mounts it on the node at <root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<VolumeName>.
	VolumeName = "sidekey-secrets"
	// AgentContainer runs the agent as a native sidecar (first init container, restartPolicy
	// Always) or, on clusters without native sidecars, as a regular sidecar.
	AgentContainer = "sidekey-agent"
	// AgentInitContainer runs `sidekey-agent --once` on clusters without native sidecars.
	AgentInitContainer = "sidekey-agent-init"
	// AgentPath is the agent's executable inside its image; the probe always allows it.
	AgentPath = "/sidekey-agent"
	// DefaultHealthAddr is where the agent serves /healthz, /readyz and /metrics (loopback only).
	DefaultHealthAddr = "127.0.0.1:8099"
	// ContainerEnv is set by the webhook in every app container it mounts the secrets into, to
	// that container's name (SIDEKEY_CONTAINER=app). With shareProcessNamespace the agent finds
	// the process to signal for onChange kind "signal" by it in /proc/<pid>/environ: containers
	// of one pod share their hostname, so nothing else in /proc tells them apart reliably.
	ContainerEnv = "SIDEKEY_CONTAINER"
)

// Annotation keys read by more than one component. The full grammar lives in the injector.
const (
	AnnotationPrefix         = "sidekey.io/"
	AnnotationInject         = AnnotationPrefix + "inject"          // "true" opts a pod in
	AnnotationStatus         = AnnotationPrefix + "status"          // "injected" once mutated
	AnnotationAllowedReaders = AnnotationPrefix + "allowed-readers" // comma list of executable paths
	AnnotationProbe          = AnnotationPrefix + "probe"           // "audit" (default) or "enforce"
	StatusInjected           = "injected"
)
