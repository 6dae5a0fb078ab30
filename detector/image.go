package detector

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/sidekey/sidekey/detector/archive"
	"github.com/sidekey/sidekey/detector/report"
)

// ScanImage scans every layer of img and its config. name is the image's name in the report.
// An error means nothing useful could be scanned (no config, no layer list); problems with
// single layers or files are in the report's Problems.
func (d *Detector) ScanImage(ctx context.Context, img v1.Image, name string) (*report.Report, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read image config of %s: %w", name, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("list layers of %s: %w", name, err)
	}
	createdBy, layerOf := layerHistory(cf, len(layers))

	s := d.newScan(ctx)
	s.layers.Store(int64(len(layers)))
	if sc, ok := img.(StoredCompressed); ok {
		s.compressed = sc.LayersStoredCompressed()
		s.uncompressedStore = !s.compressed
	}
	stop := make(chan struct{})
	go s.progress(stop)

	config, historySecrets := d.scanConfig(cf)
	for i := range createdBy {
		createdBy[i] = RedactHistory(createdBy[i], historySecrets)
	}

	indexes := make([]*layerIndex, len(layers))
	infos := make([]*layerInfo, len(layers))
	sem := make(chan struct{}, d.opts.Workers)
	var wg sync.WaitGroup
	for i, l := range layers {
		info := &layerInfo{createdBy: createdBy[i]}
		infos[i] = info
		t := &target{layer: i, info: info, source: report.SourceLayer}
		// The config's diff_ids are what the image promises; a layer's own DiffID may be
		// computed from its (possibly tampered) content.
		if len(cf.RootFS.DiffIDs) == len(layers) {
			info.diffID = cf.RootFS.DiffIDs[i].String()
		} else if id, err := l.DiffID(); err == nil {
			info.diffID = id.String()
		}
		idx := newLayerIndex()
		indexes[i] = idx
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				s.problem(t, true, "layer not scanned: %v", ctx.Err())
				return
			}
			defer func() { <-sem }()
			s.layer(t, l, idx)
			s.layersDone.Add(1)
		}()
	}
	wg.Wait()
	s.finish()
	close(stop)

	// Digests only where the report shows them.
	for _, f := range s.found {
		infos[f.t.layer].digest = "-"
	}
	for i := range config {
		if l, ok := historyLayer(&config[i], layerOf, infos); ok {
			config[i].LayerIndex = &l
			infos[l].digest = "-"
		}
	}
	for _, p := range s.problems {
		if p.Layer != nil {
			infos[*p.Layer].digest = "-"
		}
	}
	for i, info := range infos {
		if info.digest != "" {
			info.digest = ""
			// Images whose layers are not stored compressed (docker save) would be
			// gzipped whole to compute a digest: they are reported by diff_id only.
			if s.uncompressedStore {
				continue
			}
			if dg, err := layers[i].Digest(); err == nil {
				info.digest = dg.String()
			}
		}
	}
	for i := range s.problems {
		if l := s.problems[i].Layer; l != nil {
			s.problems[i].Digest = infos[*l].digest
		}
	}
	for i := range config {
		if l := config[i].LayerIndex; l != nil {
			config[i].LayerDigest = infos[*l].digest
			config[i].LayerDiffID = infos[*l].diffID
			config[i].CreatedBy = infos[*l].createdBy
		}
	}
	r := &report.Report{Image: name, Findings: config}
	for _, f := range s.found {
		r.Findings = append(r.Findings, toFinding(f.t, f.hit, status(indexes, f.t.layer, topPath(f.t.path))))
	}
	r.Findings = dedupe(r.Findings)
	r.Problems = s.problems
	if err := ctx.Err(); err != nil {
		r.Problems = append(r.Problems, report.Problem{Message: fmt.Sprintf("scan stopped: %v", err), Incomplete: true})
	}
	r.Stats = s.stats()
	r.Sort()
	return r, nil
}

// layerHistory maps each layer to the created_by of the history entry that made it
// (history entries with empty_layer make none), and each history entry to the index of the
// layer it made, or -1. Both are empty when the history does not line up with the layers.
func layerHistory(cf *v1.ConfigFile, n int) (createdBy []string, layerOf []int) {
	createdBy = make([]string, n)
	layerOf = make([]int, len(cf.History))
	var nonEmpty []string
	for i, h := range cf.History {
		layerOf[i] = -1
		if !h.EmptyLayer {
			layerOf[i] = len(nonEmpty)
			nonEmpty = append(nonEmpty, h.CreatedBy)
		}
	}
	if len(nonEmpty) != n {
		return createdBy, nil
	}
	copy(createdBy, nonEmpty)
	return createdBy, layerOf
}

// historyLayer gives a build-argument or history finding the layer its RUN made, so a report
// says which layer carries the leaked value.
func historyLayer(f *report.Finding, layerOf []int, infos []*layerInfo) (int, bool) {
	if f.Source != report.SourceConfig || f.Path != sectionHistory {
		return 0, false
	}
	h := f.Line - 1
	if h < 0 || h >= len(layerOf) || layerOf[h] < 0 || layerOf[h] >= len(infos) {
		return 0, false
	}
	return layerOf[h], true
}

// layer streams one layer: every entry goes into idx, every regular file is scanned, and
// the uncompressed content is checked against the layer's diff_id.
func (s *scan) layer(t *target, l v1.Layer, idx *layerIndex) {
	rc, err := s.openLayer(l)
	if err != nil {
		s.problem(t, true, "open layer: %v", err)
		return
	}
	defer rc.Close()
	h := sha256.New()
	tee := io.TeeReader(rc, h)
	tr := tar.NewReader(tee)
	prev := ""
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if ctxErr := s.ctx.Err(); ctxErr != nil {
				s.problem(t, true, "layer not finished: %v", ctxErr)
				return
			}
			where := "at its start"
			if prev != "" {
				where = "after " + prev
			}
			s.problem(t, true, "corrupt or truncated layer tar %s: %v", where, err)
			return
		}
		clean := archive.CleanName(hdr.Name)
		p := "/" + clean
		prev = p
		if climbs(hdr.Name) {
			s.problem(&target{layer: t.layer, path: hdr.Name}, false,
				"entry path climbs above the root; recorded and scanned as %s", p)
		}
		dir, base := path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		switch {
		case base == ".wh..wh..opq":
			idx.opaque[dir] = true
			continue
		case strings.HasPrefix(base, ".wh."):
			idx.whiteout[path.Join(dir, strings.TrimPrefix(base, ".wh."))] = true
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			idx.entries[p] = entryDir
		case tar.TypeReg, tar.TypeRegA:
			idx.entries[p] = entryFile
			ft := &target{layer: t.layer, info: t.info, source: t.source, path: p}
			if err := s.file(ft, tr, hdr.Size, 0, nil); err != nil {
				if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
					s.problem(t, true, "layer not finished: %v", err)
					return
				}
				s.problem(ft, true, "%v", err)
			}
		default:
			// Symlinks, hard links, devices: recorded (they replace what was there), never
			// followed or scanned.
			idx.entries[p] = entryOther
		}
	}
	if _, err := io.Copy(io.Discard, tee); err != nil {
		s.problem(t, true, "read layer after its end-of-archive marker: %v", err)
		return
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); t.info.diffID != "" && got != t.info.diffID {
		s.problem(t, true, "layer content has digest %s but the image config says diff_id %s: the layer is corrupt or was tampered with", got, t.info.diffID)
	}
}

// StoredCompressed is implemented by images whose layers' Compressed() returns the stored
// blob as it is (OCI layouts, registries), rather than compressing on the fly (the
// uncompressed layers of `docker save`). Such layers are decompressed here, with klauspost's
// gzip and zstd, about twice as fast as go-containerregistry's standard-library gzip.
type StoredCompressed interface {
	LayersStoredCompressed() bool
}

func (s *scan) openLayer(l v1.Layer) (io.ReadCloser, error) {
	if !s.compressed {
		return l.Uncompressed()
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(rc, 256<<10)
	magic, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("gzip: %w", err)
		}
		r = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return readCloser{zr.IOReadCloser(), rc}, nil
	}
	return readCloser{io.NopCloser(r), rc}, nil
}

type readCloser struct {
	io.ReadCloser
	under io.Closer
}

func (r readCloser) Close() error {
	r.ReadCloser.Close()
	return r.under.Close()
}

func climbs(name string) bool {
	for _, el := range strings.Split(strings.ReplaceAll(name, "\\", "/"), "/") {
		if el == ".." {
			return true
		}
	}
	return false
}

type entryKind uint8

const (
	entryFile entryKind = iota + 1
	entryDir
	entryOther
)

// layerIndex is what one layer does to the paths below it.
type layerIndex struct {
	entries  map[string]entryKind
	whiteout map[string]bool // paths removed by a .wh.NAME entry
	opaque   map[string]bool // directories whose lower contents are hidden
}

func newLayerIndex() *layerIndex {
	return &layerIndex{entries: map[string]entryKind{}, whiteout: map[string]bool{}, opaque: map[string]bool{}}
}

// topPath is the path of the layer file that holds p (p itself unless p is nested).
func topPath(p string) string {
	if i := strings.IndexByte(p, '!'); i >= 0 {
		return p[:i]
	}
	return p
}

// status says what the layers above layer i did to the file at p.
func status(indexes []*layerIndex, i int, p string) report.Status {
	for _, idx := range indexes[i+1:] {
		if _, ok := idx.entries[p]; ok {
			return report.Overwritten
		}
		if idx.whiteout[p] {
			return report.Deleted
		}
		for a := path.Dir(p); ; a = path.Dir(a) {
			if idx.whiteout[a] || idx.opaque[a] {
				return report.Deleted
			}
			if k, ok := idx.entries[a]; ok && k != entryDir {
				return report.Deleted
			}
			if a == "/" {
				break
			}
		}
	}
	return report.Present
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
