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
// waits for it by a watch; deleting it is not timed. The kubelet reports container states
// once per PLEG relist (1s), so ms/start moves in steps of about a second; ms/first-output
// is the time from create to the app's first log line (the runtime's nanosecond timestamp),
// which has no such step.
//
//	go test ./test/e2e -run '^$' -bench PodStart -benchtime 10x
func BenchmarkPodStart(b *testing.B) {
	c := cluster.Start(b)
	imgs := deploy.BuildImages(b, filepath.Join(c.Dir, "images", "sidekey"))
	e := &env{c: c}
	e.sk = deploy.Install(b, c, deploy.Options{Images: imgs})
	ns := c.Namespace(b, "bench")
	tmpl := e.app(b, ns, "bench-value", nil, "echo started; sleep 3600")

	for _, tc := range []struct {
		name   string
		inject bool
	}{{"plain", false}, {"sidekey", true}} {
		b.Run(tc.name, func(b *testing.B) {
			b.StopTimer()
			var total, output time.Duration
			for i := 0; i < b.N; i++ {
				pod := tmpl.DeepCopy()
				pod.Name = fmt.Sprintf("%s-%d", tc.name, i)
				if !tc.inject {
					pod.Annotations = nil
				}
				b.StartTimer()
				start := time.Now()
				created, err := startPod(c, pod)
				if err != nil {
					b.Fatal(err)
				}
				took := time.Since(start)
				b.StopTimer()
				total += took
				first, err := firstOutput(created)
				if err != nil {
					b.Fatal(err)
				}
				output += first.Sub(start)
				_ = c.Client.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/start")
			b.ReportMetric(float64(output.Milliseconds())/float64(b.N), "ms/first-output")
		})
	}
}

// firstOutput waits a moment for the app's first log line and returns its time.
func firstOutput(p *corev1.Pod) (time.Time, error) {
	var err error
	for range 50 {
		var t time.Time
		if t, err = cluster.FirstOutput(p, "app"); err == nil {
			return t, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Time{}, err
}

// startPod creates the pod and waits, with a watch, until its app container runs.
func startPod(c *cluster.Cluster, pod *corev1.Pod) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, err := c.Client.CoreV1().Pods(pod.Namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", pod.Name).String(),
	})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	if _, err := c.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	running := cluster.Running("app")
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			return nil, fmt.Errorf("watch pod %s: %v", pod.Name, ev.Object)
		}
		p, ok := ev.Object.(*corev1.Pod)
		if !ok {
			continue
		}
		if ok, err := running(p); err != nil || ok {
			return p, err
		}
	}
	return nil, fmt.Errorf("pod %s/%s: app not running after 2m", pod.Namespace, pod.Name)
}
