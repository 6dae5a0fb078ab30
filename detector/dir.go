package detector

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sidekey/sidekey/detector/report"
)

// ScanDir scans every regular file under root (symlinks are not followed). Paths in the
// report are relative to root.
func (d *Detector) ScanDir(ctx context.Context, root string) (*report.Report, error) {
	info, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("scan directory: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("scan directory: %s is not a directory", root)
	}
	s := d.newScan(ctx)
	stop := make(chan struct{})
	go s.progress(stop)
	walkErr := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		t := &target{layer: -1, source: report.SourceFile, path: rel}
		if err != nil {
			s.problem(t, true, "%v", err)
			if de != nil && de.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		if !de.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			s.problem(t, true, "%v", err)
			return nil
		}
		defer f.Close()
		size := int64(-1)
		if fi, err := f.Stat(); err == nil {
			size = fi.Size()
		}
		if err := s.file(t, f, size, 0, nil); err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			s.problem(t, true, "%v", err)
		}
		return nil
	})
	s.finish()
	close(stop)
	r := &report.Report{Image: root}
	for _, f := range s.found {
		r.Findings = append(r.Findings, toFinding(f.t, f.hit, report.Present))
	}
	r.Findings = dedupe(r.Findings)
	r.Problems = s.problems
	if walkErr != nil {
		r.Problems = append(r.Problems, report.Problem{Message: fmt.Sprintf("scan stopped: %v", walkErr), Incomplete: true})
	}
	r.Stats = s.stats()
	r.Sort()
	return r, nil
}
