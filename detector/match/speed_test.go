package match

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sidekey/sidekey/detector/rules"
	"github.com/zricethezav/gitleaks/v8/detect"
)

func TestSpeedAdhoc(t *testing.T) {
	root := os.Getenv("ADHOC_DIR")
	if root == "" {
		t.Skip()
	}
	cfg, _ := rules.Default()
	e := New(cfg)
	s := e.NewScanner()
	type f struct {
		p string
		b []byte
	}
	var files []f
	var total int
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, _ := os.ReadFile(p)
		if bytes.IndexByte(b[:min(len(b), 8192)], 0) >= 0 {
			return nil
		}
		files = append(files, f{p, b})
		total += len(b)
		return nil
	})
	t0 := time.Now()
	n := 0
	mine := map[string]bool{}
	for _, x := range files {
		for _, h := range s.Scan(x.p, x.b, 1) {
			n++
			mine[x.p+"|"+h.Secret] = true
		}
	}
	d := time.Since(t0)
	t.Logf("ours: %d files %d MB in %v = %.1f MB/s, %d hits", len(files), total>>20, d, float64(total)/d.Seconds()/1e6, n)
	if os.Getenv("ADHOC_GL") == "" {
		return
	}
	det := detect.NewDetector(cfg)
	t0 = time.Now()
	m := 0
	for _, x := range files {
		for _, h := range det.Detect(detect.Fragment{Raw: string(x.b), FilePath: x.p}) {
			m++
			if !mine[x.p+"|"+h.Secret] {
				t.Logf("missed %s %s:%d %q", h.RuleID, x.p, h.StartLine, h.Secret)
			}
		}
	}
	d = time.Since(t0)
	t.Logf("gitleaks: %v = %.1f MB/s, %d hits", d, float64(total)/d.Seconds()/1e6, m)
}

func TestWindowStats(t *testing.T) {
	root := os.Getenv("ADHOC_DIR")
	if root == "" {
		t.Skip()
	}
	cfg, _ := rules.Default()
	e := New(cfg)
	s := e.NewScanner()
	per := map[string]int{}
	tm := map[string]time.Duration{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, _ := os.ReadFile(p)
		if bytes.IndexByte(b[:min(len(b), 8192)], 0) >= 0 {
			return nil
		}
		s.data = b
		s.collectWindows(b)
		for _, ri := range s.touched {
			for _, w := range s.wins[ri] {
				per[e.rules[ri].RuleID] += w.end - w.start
				t0 := time.Now()
				e.rules[ri].Regex.FindAllIndex(b[w.start:w.end], -1)
				tm[e.rules[ri].RuleID] += time.Since(t0)
			}
		}
		return nil
	})
	for id, n := range per {
		if tm[id] > 5*time.Millisecond {
			t.Logf("%-40s %8d KB %v", id, n>>10, tm[id])
		}
	}
}
