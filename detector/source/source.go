// Package source opens an image reference as a go-containerregistry v1.Image:
//
//	docker-archive:PATH   output of `docker save` (legacy and OCI-style layouts)
//	oci:DIR               an OCI image layout directory
//	oci-archive:PATH      a tar of an OCI image layout (read in place, not extracted)
//	registry:REF, REF     an image in a registry, with the default keychain
//	PATH                  an existing file or directory, recognised by its content
//
// Everything else in the detector works on the v1.Image.
package source

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Kind is how a reference is read.
type Kind string

// Kinds of reference.
const (
	DockerArchive Kind = "docker-archive"
	OCI           Kind = "oci"
	OCIArchive    Kind = "oci-archive"
	Registry      Kind = "registry"
)

// Image is an opened image. Close releases files it holds open.
type Image struct {
	v1.Image
	Kind Kind
	// Name is the reference as the report shows it.
	Name  string
	close func() error
}

// LayersStoredCompressed reports whether Compressed() returns the layers as stored: true for
// OCI layouts and registries, false for docker-archive (whose layers may be uncompressed,
// and which go-containerregistry would compress to produce Compressed()).
func (i *Image) LayersStoredCompressed() bool { return i.Kind != DockerArchive }

// Close releases the image's files.
func (i *Image) Close() error {
	if i.close == nil {
		return nil
	}
	return i.close()
}

// Options for Open.
type Options struct {
	// Platform picks the image from a multi-platform index (default: this machine's).
	Platform *v1.Platform
	// Keychain authenticates to registries (default authn.DefaultKeychain).
	Keychain authn.Keychain
	// Insecure allows plain-HTTP registries.
	Insecure bool
}

// Parse splits ref into its kind and location, recognising a plain path by its content.
func Parse(ref string) (Kind, string, error) {
	for _, k := range []Kind{DockerArchive, OCIArchive, OCI, Registry} {
		if rest, ok := strings.CutPrefix(ref, string(k)+":"); ok {
			if rest == "" {
				return "", "", fmt.Errorf("image reference %q: nothing after %s:", ref, k)
			}
			return k, rest, nil
		}
	}
	if fi, err := os.Stat(ref); err == nil {
		if fi.IsDir() {
			if _, err := os.Stat(filepath.Join(ref, "oci-layout")); err == nil {
				return OCI, ref, nil
			}
			return "", "", fmt.Errorf("directory %s is not an OCI image layout (no oci-layout file); use `sidekey detect dir` for a plain directory", ref)
		}
		k, err := sniffTar(ref)
		if err != nil {
			return "", "", err
		}
		return k, ref, nil
	}
	if strings.ContainsAny(ref, `/\`) && (strings.HasPrefix(ref, ".") || strings.HasPrefix(ref, "/")) {
		return "", "", fmt.Errorf("image reference %q: no such file or directory", ref)
	}
	return Registry, ref, nil
}

// sniffTar tells a docker-archive (manifest.json) from an oci-archive (index.json) tar.
func sniffTar(p string) (Kind, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	oci := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("%s is neither a directory nor an image tar: %w", p, err)
		}
		switch strings.TrimPrefix(h.Name, "./") {
		case "manifest.json":
			return DockerArchive, nil
		case "index.json", "oci-layout":
			oci = true
		}
	}
	if oci {
		return OCIArchive, nil
	}
	return "", fmt.Errorf("%s is a tar without manifest.json or index.json: not a docker or OCI archive", p)
}

// Open opens ref.
func Open(ctx context.Context, ref string, opts Options) (*Image, error) {
	kind, loc, err := Parse(ref)
	if err != nil {
		return nil, err
	}
	if opts.Platform == nil {
		opts.Platform = &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	}
	img := &Image{Kind: kind, Name: ref}
	switch kind {
	case DockerArchive:
		img.Image, err = tarball.ImageFromPath(loc, nil)
		if err != nil {
			err = fmt.Errorf("open docker archive %s: %w", loc, err)
		}
	case OCI:
		var p layout.Path
		p, err = layout.FromPath(loc)
		if err == nil {
			var idx v1.ImageIndex
			idx, err = p.ImageIndex()
			if err == nil {
				img.Image, err = pick(idx, opts.Platform)
			}
		}
		if err != nil {
			err = fmt.Errorf("open OCI layout %s: %w", loc, err)
		}
	case OCIArchive:
		var a *ociArchive
		a, err = openOCIArchive(loc)
		if err == nil {
			img.close = a.Close
			img.Image, err = pick(a, opts.Platform)
			if err != nil {
				a.Close()
			}
		}
		if err != nil {
			err = fmt.Errorf("open OCI archive %s: %w", loc, err)
		}
	case Registry:
		img.Image, err = openRemote(ctx, loc, opts)
	}
	if err != nil {
		return nil, err
	}
	return img, nil
}

func openRemote(ctx context.Context, ref string, opts Options) (v1.Image, error) {
	var nopts []name.Option
	if opts.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	kc := opts.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	desc, err := remote.Get(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithPlatform(*opts.Platform))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
		return pick(idx, opts.Platform)
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

// errNoImage is returned when an index holds no image.
var errNoImage = errors.New("the index holds no image")

// pick returns the image of idx for platform, or its only image, descending into nested
// indexes.
func pick(idx v1.ImageIndex, platform *v1.Platform) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var images []v1.Descriptor
	for _, d := range im.Manifests {
		switch {
		case d.MediaType.IsImage():
			images = append(images, d)
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, err
			}
			if img, err := pick(child, platform); err == nil {
				return img, nil
			}
		}
	}
	if len(images) == 0 {
		return nil, errNoImage
	}
	chosen := images[0]
	if len(images) > 1 && platform != nil {
		for _, d := range images {
			if d.Platform != nil && d.Platform.OS == platform.OS && d.Platform.Architecture == platform.Architecture {
				chosen = d
				break
			}
		}
	}
	return idx.Image(chosen.Digest)
}
