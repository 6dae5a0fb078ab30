package source

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ociArchive is an OCI image layout inside a tar file, read in place: the tar is indexed
// once and blobs are read as sections of the file.
type ociArchive struct {
	f     *os.File
	blobs map[string]section // "sha256:hex" -> where the blob is
	index []byte
}

type section struct{ off, size int64 }

func openOCIArchive(p string) (*ociArchive, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	a := &ociArchive{f: f, blobs: map[string]section{}}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read tar: %w", err)
		}
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA {
			continue
		}
		name := strings.TrimPrefix(h.Name, "./")
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			f.Close()
			return nil, err
		}
		switch {
		case name == "index.json":
			if a.index, err = io.ReadAll(io.LimitReader(tr, 16<<20)); err != nil {
				f.Close()
				return nil, fmt.Errorf("read index.json: %w", err)
			}
		case strings.HasPrefix(name, "blobs/"):
			parts := strings.Split(name, "/")
			if len(parts) == 3 {
				a.blobs[parts[1]+":"+parts[2]] = section{off: off, size: h.Size}
			}
		}
	}
	if a.index == nil {
		f.Close()
		return nil, fmt.Errorf("no index.json")
	}
	return a, nil
}

func (a *ociArchive) Close() error { return a.f.Close() }

func (a *ociArchive) blob(h v1.Hash) (*io.SectionReader, error) {
	s, ok := a.blobs[h.String()]
	if !ok {
		return nil, fmt.Errorf("blob %s not in the archive", h)
	}
	return io.NewSectionReader(a.f, s.off, s.size), nil
}

func (a *ociArchive) blobBytes(h v1.Hash) ([]byte, error) {
	r, err := a.blob(h)
	if err != nil {
		return nil, err
	}
	if r.Size() > 64<<20 {
		return nil, fmt.Errorf("blob %s: %d bytes is too large for a manifest or config", h, r.Size())
	}
	return io.ReadAll(r)
}

// The archive is the top-level index (v1.ImageIndex).

func (a *ociArchive) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }
func (a *ociArchive) Digest() (v1.Hash, error)            { return partial.Digest(a) }
func (a *ociArchive) Size() (int64, error)                { return int64(len(a.index)), nil }
func (a *ociArchive) RawManifest() ([]byte, error)        { return a.index, nil }
func (a *ociArchive) IndexManifest() (*v1.IndexManifest, error) {
	return v1.ParseIndexManifest(bytes.NewReader(a.index))
}
func (a *ociArchive) Manifests() ([]partial.Describable, error) {
	return nil, fmt.Errorf("not supported")
}
func (a *ociArchive) Image(h v1.Hash) (v1.Image, error) {
	raw, err := a.blobBytes(h)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&archiveImage{a: a, manifest: raw})
}
func (a *ociArchive) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	raw, err := a.blobBytes(h)
	if err != nil {
		return nil, err
	}
	return &childIndex{ociArchive: a, raw: raw}, nil
}

// childIndex is a nested index inside the archive.
type childIndex struct {
	*ociArchive
	raw []byte
}

func (c *childIndex) RawManifest() ([]byte, error) { return c.raw, nil }
func (c *childIndex) Size() (int64, error)         { return int64(len(c.raw)), nil }
func (c *childIndex) Digest() (v1.Hash, error)     { return partial.Digest(c) }
func (c *childIndex) IndexManifest() (*v1.IndexManifest, error) {
	return v1.ParseIndexManifest(bytes.NewReader(c.raw))
}

// archiveImage is one image manifest in the archive (partial.CompressedImageCore).
type archiveImage struct {
	a        *ociArchive
	manifest []byte
}

func (i *archiveImage) RawManifest() ([]byte, error) { return i.manifest, nil }
func (i *archiveImage) MediaType() (types.MediaType, error) {
	var m struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	if err := json.Unmarshal(i.manifest, &m); err != nil || m.MediaType == "" {
		return types.OCIManifestSchema1, nil
	}
	return m.MediaType, nil
}
func (i *archiveImage) RawConfigFile() ([]byte, error) {
	m, err := v1.ParseManifest(bytes.NewReader(i.manifest))
	if err != nil {
		return nil, err
	}
	return i.a.blobBytes(m.Config.Digest)
}
func (i *archiveImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	m, err := v1.ParseManifest(bytes.NewReader(i.manifest))
	if err != nil {
		return nil, err
	}
	for _, l := range m.Layers {
		if l.Digest == h {
			return &archiveLayer{a: i.a, desc: l}, nil
		}
	}
	return nil, fmt.Errorf("layer %s not in the manifest", h)
}

type archiveLayer struct {
	a    *ociArchive
	desc v1.Descriptor
}

func (l *archiveLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *archiveLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *archiveLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *archiveLayer) Compressed() (io.ReadCloser, error) {
	r, err := l.a.blob(l.desc.Digest)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(r), nil
}
