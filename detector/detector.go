// Package detector finds secrets baked into container images, directory trees and the image
// config. It is written once against go-containerregistry's v1.Image: every source of
// images (docker-archive, OCI layout, registry) is opened by package detector/source.
//
// A scan streams every layer (never extracting it), several layers at a time; a reader per
// layer walks the tar, recurses into nested archives (detector/archive) and hands file
// contents in bounded chunks to a pool of workers that match them (detector/match). When all
// layers are read, each finding gets its status — present, deleted or overwritten — from
// the whiteouts and entries of the later layers.
package detector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/h2non/filetype"

	"github.com/sidekey/sidekey/detector/archive"
	"github.com/sidekey/sidekey/detector/match"
	"github.com/sidekey/sidekey/detector/report"
)

// Options tune a Detector. The zero value is usable.
type Options struct {
	// ScanBinaries scans files that content sniffing calls binary (skipped by default).
	ScanBinaries bool
	// Limits cap nested archive expansion; zero fields take archive.DefaultLimits.
	Limits archive.Limits
	// Workers is the number of matching goroutines and of layers read at once
	// (default GOMAXPROCS).
	Workers int
	// ChunkSize is the largest piece of one file matched at once; larger files are matched
	// in overlapping chunks, so memory does not grow with file size (default 4 MiB).
	ChunkSize int
	// Logger receives debug and warning logs (default: discard).
	Logger *slog.Logger
	// Progress, when set, is called about twice a second during a scan.
	Progress func(Progress)
}

// Progress is a snapshot of a running scan.
type Progress struct {
	Layers, LayersDone int
	Files, Bytes       int64
	Elapsed            time.Duration
}

// Detector scans with one rule engine. Safe for concurrent use.
type Detector struct {
	engine *match.Engine
	opts   Options
	log    *slog.Logger
}

// New returns a Detector matching with engine.
func New(engine *match.Engine, opts Options) *Detector {
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = 4 << 20
	}
	if opts.ChunkSize < 2*overlap {
		opts.ChunkSize = 2 * overlap
	}
	def := archive.DefaultLimits
	if opts.Limits.MaxDepth == 0 {
		opts.Limits.MaxDepth = def.MaxDepth
	}
	if opts.Limits.MaxExpanded == 0 {
		opts.Limits.MaxExpanded = def.MaxExpanded
	}
	if opts.Limits.MaxRatio == 0 {
		opts.Limits.MaxRatio = def.MaxRatio
	}
	if opts.Limits.MaxZipBytes == 0 {
		opts.Limits.MaxZipBytes = def.MaxZipBytes
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Detector{engine: engine, opts: opts, log: log}
}

// overlap is how much of the previous chunk a chunk repeats, so a match up to overlap/2
// bytes long is seen whole by exactly one chunk.
const overlap = 128 << 10

// binarySniff is how many leading bytes decide whether a file is binary.
const binarySniff = 8000

// target is the file a chunk belongs to.
type target struct {
	layer  int        // -1 outside an image
	info   *layerInfo // nil outside an image
	source string
	path   string
}

// layerInfo describes one layer. digest is filled in after the scan, and only for layers
// with findings or problems: for an uncompressed layer (docker save) go-containerregistry
// computes it by compressing the whole layer.
type layerInfo struct {
	digest    string
	diffID    string
	createdBy string
}

func (t *target) child(name string) *target {
	c := *t
	c.path = t.path + "!" + name
	return &c
}

// job is one chunk of one file. Hits starting in [keepFrom, keepTo) belong to this chunk.
type job struct {
	t                *target
	buf              *[]byte
	data             []byte
	startLine        int
	keepFrom, keepTo int
	first            bool
}

// rawFinding is a hit before its status is known.
type rawFinding struct {
	t   *target
	hit match.Hit
}

// scan is one run of the Detector.
type scan struct {
	d     *Detector
	ctx   context.Context
	jobs  chan job
	pool  sync.Pool
	wg    sync.WaitGroup
	start time.Time

	mu       sync.Mutex
	found    []rawFinding
	problems []report.Problem

	// compressed: read layers through Compressed(); uncompressedStore: the image said its
	// layers are not stored compressed (see StoredCompressed).
	compressed, uncompressedStore bool

	files, bytes, skipped, archives atomic.Int64
	layers, layersDone              atomic.Int64
}

func (d *Detector) newScan(ctx context.Context) *scan {
	s := &scan{d: d, ctx: ctx, jobs: make(chan job, d.opts.Workers), start: time.Now()}
	s.pool.New = func() any { b := make([]byte, 0, 64<<10); return &b }
	for range d.opts.Workers {
		s.wg.Add(1)
		go s.worker()
	}
	return s
}

// finish stops the workers and returns the raw findings.
func (s *scan) finish() {
	close(s.jobs)
	s.wg.Wait()
}

func (s *scan) worker() {
	defer s.wg.Done()
	sc := s.d.engine.NewScanner()
	for j := range s.jobs {
		hits := sc.Scan(j.t.path, j.data, j.startLine)
		var keep []rawFinding
		for _, h := range hits {
			if h.End == 0 && h.Start == 0 && !j.first {
				continue // a path rule: reported with the first chunk only
			}
			if (h.Start != 0 || h.End != 0) && (h.Start < j.keepFrom || h.Start >= j.keepTo) {
				continue
			}
			keep = append(keep, rawFinding{t: j.t, hit: h})
		}
		if len(keep) > 0 {
			s.mu.Lock()
			s.found = append(s.found, keep...)
			s.mu.Unlock()
		}
		s.bytes.Add(int64(j.keepTo - j.keepFrom))
		*j.buf = (*j.buf)[:0]
		s.pool.Put(j.buf)
	}
}

func (s *scan) problem(t *target, incomplete bool, format string, args ...any) {
	p := report.Problem{Message: fmt.Sprintf(format, args...), Incomplete: incomplete}
	if t != nil {
		p.Path = t.path
		if t.layer >= 0 {
			l := t.layer
			p.Layer = &l
		}
	}
	s.d.log.Warn("scan problem", "problem", p.String(), "incomplete", incomplete)
	s.mu.Lock()
	s.problems = append(s.problems, p)
	s.mu.Unlock()
}

// file scans one file's content read from r (size -1 when unknown). depth is the archive
// depth of the file (0 for a file directly in a layer or directory); budget is shared by
// everything expanded from one top-level file.
func (s *scan) file(t *target, r io.Reader, size int64, depth int, budget *archive.Budget) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if s.d.engine.PathAllowed(t.path) {
		s.skipped.Add(1)
		return nil
	}
	chunk := s.d.opts.ChunkSize
	first := chunk
	if size >= 0 && size < int64(chunk) {
		first = int(size)
	}
	buf := s.pool.Get().(*[]byte)
	data := grow(*buf, first)
	n, err := io.ReadFull(r, data)
	data = data[:n]
	*buf = data
	eof := err == io.EOF || err == io.ErrUnexpectedEOF || (size >= 0 && int64(n) == size)
	if err != nil && !eof {
		s.pool.Put(buf)
		return fmt.Errorf("read %s: %w", t.path, err)
	}
	head := data[:min(len(data), archive.HeadSize)]
	if kind := archive.Sniff(head); kind != archive.None {
		defer s.pool.Put(buf)
		return s.nested(t, kind, io.MultiReader(bytes.NewReader(data), r), depth, budget)
	}
	if !s.d.opts.ScanBinaries && binary(data[:min(len(data), binarySniff)]) {
		s.pool.Put(buf)
		s.skipped.Add(1)
		return nil
	}
	s.files.Add(1)
	if eof {
		s.send(job{t: t, buf: buf, data: data, startLine: 1, keepFrom: 0, keepTo: len(data), first: true})
		return nil
	}
	return s.chunked(t, r, buf, data)
}

// chunked sends a large file as overlapping chunks, the first of which is already in data.
func (s *scan) chunked(t *target, r io.Reader, buf *[]byte, data []byte) error {
	chunk := s.d.opts.ChunkSize
	line, first, keepFrom := 1, true, 0
	for {
		// data is full: the next chunk starts overlap bytes before its end.
		next := s.pool.Get().(*[]byte)
		nd := grow(*next, chunk)
		copy(nd, data[len(data)-overlap:])
		n, err := io.ReadFull(r, nd[overlap:])
		nd = nd[:overlap+n]
		*next = nd
		last := err != nil
		keepTo := len(data) - overlap/2
		if n == 0 {
			keepTo = len(data)
		}
		s.send(job{t: t, buf: buf, data: data, startLine: line, keepFrom: keepFrom, keepTo: keepTo, first: first})
		line += bytes.Count(data[:len(data)-overlap], []byte("\n"))
		if n == 0 {
			s.pool.Put(next)
			break
		}
		buf, data, first, keepFrom = next, nd, false, overlap/2
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			s.send(job{t: t, buf: buf, data: data, startLine: line, keepFrom: keepFrom, keepTo: len(data)})
			return fmt.Errorf("read %s: %w", t.path, err)
		}
		if last {
			s.send(job{t: t, buf: buf, data: data, startLine: line, keepFrom: keepFrom, keepTo: len(data)})
			break
		}
	}
	return nil
}

func (s *scan) send(j job) {
	select {
	case s.jobs <- j:
	case <-s.ctx.Done():
		s.pool.Put(j.buf)
	}
}

// nested walks an archive found at t. Problems inside it are recorded, not returned: the
// outer walk goes on.
func (s *scan) nested(t *target, kind archive.Kind, r io.Reader, depth int, budget *archive.Budget) error {
	if budget == nil {
		budget = archive.NewBudget(s.d.opts.Limits)
	}
	if depth+1 > budget.MaxDepth {
		s.problem(t, true, "%s archive: %v (depth %d)", kind, archive.ErrTooDeep, budget.MaxDepth)
		return nil
	}
	s.archives.Add(1)
	err := archive.Walk(kind, r, t.path, depth+1, budget, func(name string, size int64, r io.Reader) error {
		return s.file(t.child(name), r, size, depth+1, budget)
	})
	switch {
	case err == nil:
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, archive.ErrBomb), errors.Is(err, archive.ErrTooLarge), errors.Is(err, archive.ErrTooDeep):
		// A limit stopped us: the rest of the archive is unscanned.
		s.problem(t, true, "%s archive: %v", kind, err)
	default:
		// A corrupt archive (test data, a truncated download) is reported but does not make
		// the scan incomplete: what it held is unreadable to anyone.
		s.problem(t, false, "%s archive: %v", kind, err)
	}
	return nil
}

// binary reports whether head looks like binary content: a NUL byte, or a type that
// filetype recognises as an application format (executables, archives, databases, ...).
func binary(head []byte) bool {
	if bytes.IndexByte(head, 0) >= 0 {
		return true
	}
	if t, err := filetype.Match(head); err == nil && t != filetype.Unknown && t.MIME.Type != "text" {
		return true
	}
	return false
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// progress reports until stop is closed.
func (s *scan) progress(stop <-chan struct{}) {
	if s.d.opts.Progress == nil {
		return
	}
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.d.opts.Progress(Progress{
				Layers: int(s.layers.Load()), LayersDone: int(s.layersDone.Load()),
				Files: s.files.Load(), Bytes: s.bytes.Load(), Elapsed: time.Since(s.start),
			})
		}
	}
}

func (s *scan) stats() report.Stats {
	return report.Stats{
		Layers:     int(s.layers.Load()),
		Files:      s.files.Load(),
		Bytes:      s.bytes.Load(),
		DurationMS: time.Since(s.start).Milliseconds(),
		Skipped:    s.skipped.Load(),
		Archives:   s.archives.Load(),
	}
}

// toFinding turns a hit into a redacted, fingerprinted finding.
func toFinding(t *target, h match.Hit, status report.Status) report.Finding {
	info := t.info
	if info == nil {
		info = &layerInfo{}
	}
	f := report.Finding{
		Rule:        h.RuleID,
		Description: h.Description,
		Source:      t.source,
		Path:        t.path,
		Status:      status,
		LayerDigest: info.digest,
		LayerDiffID: info.diffID,
		CreatedBy:   info.createdBy,
		Line:        h.Line,
		Secret:      report.Redact(h.Secret),
		Entropy:     h.Entropy,
		Fingerprint: report.Fingerprint(h.RuleID, info.diffID, t.path, h.Secret),
	}
	if t.layer >= 0 {
		l := t.layer
		f.LayerIndex = &l
	}
	return f
}

func dedupe(fs []report.Finding) []report.Finding {
	slices.SortStableFunc(fs, func(a, b report.Finding) int {
		if a.Fingerprint < b.Fingerprint {
			return -1
		}
		if a.Fingerprint > b.Fingerprint {
			return 1
		}
		return a.Line - b.Line
	})
	return slices.CompactFunc(fs, func(a, b report.Finding) bool {
		return a.Fingerprint == b.Fingerprint && a.Line == b.Line
	})
}

// Engine is the rule engine the Detector matches with.
func (d *Detector) Engine() *match.Engine { return d.engine }
