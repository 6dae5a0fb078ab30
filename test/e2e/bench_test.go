package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/sidekey/sidekey/test/cluster"
	"github.com/sidekey/sidekey/test/deploy"
)

// BenchmarkPodStart measures, on the real node, the time from pod create to the app
// container running: "plain" is the test app alone (the anchor), "sidekey" the same pod
// annotated for one Vault KV v2 secret, so that the webhook injects the agent, which logs in
// to Vault and writes the file before the app starts. Each iteration creates one pod and
// waits for it by a watch; deleting it is not timed.
//
//	go test ./test/e2e -run '^$' -bench PodStart -benchtime 10x
func BenchmarkPodStart(b *testing.B) {
	c := cluster.Start(b)
	imgs := deploy.BuildImages(b, filepath.Join(c.Dir, "images", "sidekey"))
	e := &env{c: c}
	e.sk = deploy.Install(b, c, deploy.Options{Images: imgs})
	ns := c.Namespace(b, "bench")
	tmpl := e.app(b, ns, "bench-value", nil, "sleep 3600")

	for _, tc := range []struct {
		name   string
		inject bool
	}{{"plain", false}, {"sidekey", true}} {
		b.Run(tc.name, func(b *testing.B) {
			b.StopTimer()
			var total time.Duration
			for i := 0; i < b.N; i++ {
				pod := tmpl.DeepCopy()
				pod.Name = fmt.Sprintf("%s-%d", tc.name, i)
				if !tc.inject {
					pod.Annotations = nil
				}
				b.StartTimer()
				start := time.Now()
				if err := startPod(c, pod); err != nil {
					b.Fatal(err)
				}
				took := time.Since(start)
				b.StopTimer()
				total += took
				_ = c.Client.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/start")
		})
	}
}

// startPod creates the pod and waits, with a watch, until its app container runs.
func startPod(c *cluster.Cluster, pod *corev1.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, err := c.Client.CoreV1().Pods(pod.Namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", pod.Name).String(),
	})
	if err != nil {
		return err
	}
	defer w.Stop()
	if _, err := c.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return err
	}
	running := cluster.Running("app")
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			return fmt.Errorf("watch pod %s: %v", pod.Name, ev.Object)
		}
		p, ok := ev.Object.(*corev1.Pod)
		if !ok {
			continue
		}
		if ok, err := running(p); err != nil || ok {
			return err
		}
	}
	return fmt.Errorf("pod %s/%s: app not running after 2m", pod.Namespace, pod.Name)
}
