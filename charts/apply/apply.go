// Package apply sends Kubernetes manifests to a real API server the way
// `kubectl apply --server-side --dry-run=server` does, so the server's own validation (schemas,
// CEL, admission) judges them. The chart's and the examples' tests use it.
package apply

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"
)

// FieldManager names the applier in managedFields.
const FieldManager = "sidekey-test"

// Objects splits a YAML stream into objects, skipping empty documents. Lists are not expanded.
func Objects(manifests []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifests)))
	var objs []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", doc, err)
		}
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", doc, err)
		}
		if t := bytes.TrimSpace(js); len(t) == 0 || bytes.Equal(t, []byte("null")) {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", doc, err)
		}
		objs = append(objs, u)
	}
}

// Client applies objects to one API server.
type Client struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

// New returns a Client for cfg.
func New(cfg *rest.Config) (*Client, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Client{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}, nil
}

// Reset forgets the cached discovery, e.g. after installing a CRD.
func (c *Client) Reset() { c.mapper.Reset() }

// Serves reports whether the API server serves gvk (a CRD is served once it is Established).
func (c *Client) Serves(gvk schema.GroupVersionKind) bool {
	_, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	return err == nil
}

// DryRun server-side applies every object with dryRun=All: nothing is stored, but the API
// server validates each one completely. Namespaced objects without a namespace go to ns. Every
// refusal is returned, each naming its object.
func (c *Client) DryRun(ctx context.Context, ns string, objs ...*unstructured.Unstructured) error {
	return c.apply(ctx, ns, true, objs)
}

// Apply server-side applies the objects for real.
func (c *Client) Apply(ctx context.Context, ns string, objs ...*unstructured.Unstructured) error {
	return c.apply(ctx, ns, false, objs)
}

func (c *Client) apply(ctx context.Context, ns string, dryRun bool, objs []*unstructured.Unstructured) error {
	var errs []error
	for _, o := range objs {
		if err := c.one(ctx, ns, dryRun, o); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", o.GetKind(), name(o), err))
		}
	}
	return errors.Join(errs...)
}

func (c *Client) one(ctx context.Context, ns string, dryRun bool, o *unstructured.Unstructured) error {
	gvk := o.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("the API server does not serve %s: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if o.GetNamespace() == "" {
			o = o.DeepCopy()
			o.SetNamespace(ns)
		}
		ri = c.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	body, err := o.MarshalJSON()
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: ptr(true)}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, body, opts)
	return err
}

func name(o *unstructured.Unstructured) string {
	if o.GetNamespace() != "" {
		return o.GetNamespace() + "/" + o.GetName()
	}
	return o.GetName()
}

func ptr[T any](v T) *T { return &v }
