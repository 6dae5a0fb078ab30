// Package ocibuild assembles container images from files, without a Docker daemon, the same way
// every time: fixed timestamps, sorted entries, root-owned files, OCI media types. hack/images
// builds sidekey's own images with it; the examples' tests build the images a Dockerfile would.
package ocibuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one entry of a layer. Parent directories are added (0755) when missing.
type File struct {
	Path string // absolute or relative to /; "dir/.wh.name" deletes dir/name of a lower layer
	Mode int64  // permission bits; 0 means 0644 (0755 for directories)
	Data []byte
	Dir  bool
	UID  int
	GID  int
}

// Layer returns a layer holding files, with every timestamp set to epoch. The same files give
// the same digest.
func Layer(epoch time.Time, files ...File) (v1.Layer, error) {
	b, err := layerTar(epoch, files)
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

func layerTar(epoch time.Time, files []File) ([]byte, error) {
	entries := map[string]File{}
	for _, f := range files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if p == "" || p == "." {
			return nil, fmt.Errorf("layer file %q: want a path below /", f.Path)
		}
		if _, dup := entries[p]; dup {
			return nil, fmt.Errorf("layer file %q: listed twice", f.Path)
		}
		f.Path = p
		entries[p] = f
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = File{Path: d, Dir: true}
			}
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		f := entries[n]
		h := &tar.Header{Name: n, ModTime: epoch, Uid: f.UID, Gid: f.GID, Format: tar.FormatPAX, Mode: f.Mode}
		if f.Dir {
			h.Typeflag, h.Name = tar.TypeDir, n+"/"
			if h.Mode == 0 {
				h.Mode = 0o755
			}
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		}
		// PAX without access/change times: only ModTime, which is fixed.
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer file %q: %w", n, err)
		}
		if !f.Dir {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("layer file %q: %w", n, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Step is one layer of an image and the history line that made it (what `docker history`
// shows, e.g. the RUN command with its build args). A Step without a Layer is an empty layer
// (ENV, ARG, ...).
type Step struct {
	Layer     v1.Layer
	CreatedBy string
}

// Image assembles an image on an empty base: the steps' layers in order, the config, and the
// platform, all stamped with epoch.
func Image(epoch time.Time, platform v1.Platform, cfg v1.Config, steps ...Step) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var err error
	for i, s := range steps {
		if s.Layer == nil {
			continue // history only, set with the config below
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: s.Layer, MediaType: types.OCILayer})
		if err != nil {
			return nil, fmt.Errorf("append layer %d: %w", i+1, err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config = cfg
	cf.Created = v1.Time{Time: epoch}
	cf.Architecture, cf.OS, cf.Variant, cf.OSVersion = platform.Architecture, platform.OS, platform.Variant, platform.OSVersion
	// History in step order, empty layers included.
	cf.History = cf.History[:0]
	for _, s := range steps {
		cf.History = append(cf.History, v1.History{Created: v1.Time{Time: epoch}, CreatedBy: s.CreatedBy, EmptyLayer: s.Layer == nil})
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set image config: %w", err)
	}
	return img, nil
}
