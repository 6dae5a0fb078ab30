package cluster

import (
	"context"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNodeRunsPod runs a real pod on the real kubelet: an init container writes into a
// memory-backed emptyDir, the app container reads it back and exits. The test reads the app's
// log from the kubelet's log files and checks that the volume was a tmpfs on the host.
func TestNodeRunsPod(t *testing.T) {
	c := Start(t, WithoutVault())
	ns := c.Namespace(t, "node")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "tmpfs-reader", Namespace: ns},
		Spec: corev1.PodSpec{
			NodeName:      NodeName,
			RestartPolicy: corev1.RestartPolicyNever,
			InitContainers: []corev1.Container{{
				Name: "fetch", Image: AppImage, ImagePullPolicy: corev1.PullNever,
				Command:      []string{"sh", "-c", "echo from-init > /data/value"},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
			}},
			Containers: []corev1.Container{{
				Name: "app", Image: AppImage, ImagePullPolicy: corev1.PullNever,
				// Print the value and the filesystem type of its mount, then wait long enough for the
				// test to look at the tmpfs on the host before the pod ends.
				Command:      []string{"sh", "-c", "cat /data/value; grep ' /data ' /proc/mounts | cut -d' ' -f3; sleep 3"},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}},
		},
	}
	created, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	running, err := c.WaitPod(ctx, ns, created.Name, Running("app"))
	if err != nil {
		t.Fatal(err)
	}
	host := c.VolumePath(running, "data")
	b, err := os.ReadFile(host + "/value")
	if err != nil || string(b) != "from-init\n" {
		t.Errorf("host copy of the value = %q, %v; want %q", b, err, "from-init\n")
	}
	if fs := MountType(host); fs != "tmpfs" {
		t.Errorf("filesystem of %s on the host = %q; want tmpfs", host, fs)
	}
	done, err := c.WaitPod(ctx, ns, created.Name, Phase(corev1.PodSucceeded))
	if err != nil {
		t.Fatal(err)
	}
	log, err := c.WaitLog(ctx, done, "app", "tmpfs")
	if err != nil {
		t.Fatal(err)
	}
	if want := "from-init\ntmpfs\n"; log != want {
		t.Errorf("app log = %q; want %q", log, want)
	}
}
