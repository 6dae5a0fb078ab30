package cluster

import (
	"context"
	"fmt"
	"net"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"
)

// RunWorkloads stands in for kube-controller-manager and kube-proxy for the Deployments and
// DaemonSets of a namespace (what `helm install` creates): for each it creates one pod from
// the pod template, bound to the node and owned by the workload, whose in-cluster clients
// reach the API server through the cluster's proxy (KUBERNETES_SERVICE_HOST/PORT). It returns
// the pods it created.
func (c *Cluster) RunWorkloads(ctx context.Context, ns string) ([]*corev1.Pod, error) {
	var pods []*corev1.Pod
	deps, err := c.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list deployments in %s: %w", ns, err)
	}
	for _, d := range deps.Items {
		p, err := c.runTemplate(ctx, ns, d.Name, d.Spec.Template, metav1.OwnerReference{
			APIVersion: "apps/v1", Kind: "Deployment", Name: d.Name, UID: d.UID,
		})
		if err != nil {
			return nil, err
		}
		pods = append(pods, p)
	}
	dss, err := c.Client.AppsV1().DaemonSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list daemonsets in %s: %w", ns, err)
	}
	for _, ds := range dss.Items {
		p, err := c.runTemplate(ctx, ns, ds.Name, ds.Spec.Template, metav1.OwnerReference{
			APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID,
		})
		if err != nil {
			return nil, err
		}
		pods = append(pods, p)
	}
	return pods, nil
}

func (c *Cluster) runTemplate(ctx context.Context, ns, owner string, tmpl corev1.PodTemplateSpec, ref metav1.OwnerReference) (*corev1.Pod, error) {
	ref.Controller = ptr.To(true)
	host, port, err := net.SplitHostPort(c.apiProxy.Addr())
	if err != nil {
		return nil, err
	}
	pod := &corev1.Pod{ObjectMeta: *tmpl.ObjectMeta.DeepCopy(), Spec: *tmpl.Spec.DeepCopy()}
	pod.Name = owner + "-" + rand.String(5)
	pod.Namespace = ns
	pod.OwnerReferences = []metav1.OwnerReference{ref}
	pod.Spec.NodeName = NodeName
	pod.Spec.Affinity = nil // scheduling hints; there is one node
	env := []corev1.EnvVar{{Name: "KUBERNETES_SERVICE_HOST", Value: host}, {Name: "KUBERNETES_SERVICE_PORT", Value: port}}
	for i := range pod.Spec.Containers {
		pod.Spec.Containers[i].Env = append(pod.Spec.Containers[i].Env, env...)
	}
	for i := range pod.Spec.InitContainers {
		pod.Spec.InitContainers[i].Env = append(pod.Spec.InitContainers[i].Env, env...)
	}
	created, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod of %s %s/%s: %w", ref.Kind, ns, owner, err)
	}
	return created, nil
}
