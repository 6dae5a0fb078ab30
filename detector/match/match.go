// Package match is the content-matching engine: gitleaks rules (config.Config) plus
// file rules of our own, applied to one file's bytes.
//
// It gives the findings gitleaks' detector gives for the same rules, but does far less work:
// one Aho-Corasick pass over the lower-cased content finds every rule keyword, and a rule's
// regular expression then runs only on windows around its keyword hits (merged when they
// overlap), never on the whole file. Entropy, secret groups, `gitleaks:allow` and the global
// and per-rule allowlists are applied exactly as gitleaks applies them.
//
// Not reproduced: gitleaks' recursive decoding of base64/hex/percent-encoded segments and
// composite rules' `[[rules.required]]` proximity checks (a composite rule reports its
// primary matches alone, so it can only report more than gitleaks, not less).
package match

import (
	"bytes"
	"math"
	"slices"
	"strings"

	ahocorasick "github.com/BobuSumisu/aho-corasick"
	"github.com/zricethezav/gitleaks/v8/config"
)

// Hit is one secret found in one piece of content.
type Hit struct {
	RuleID      string
	Description string
	// Start and End are byte offsets of the match in the scanned content.
	Start, End int
	// Line is the 1-based line of Start, counted from the startLine given to Scan.
	Line int
	// Secret is the secret itself (a capture group of the match when the rule has one).
	// Callers redact it before it leaves the process.
	Secret  string
	Entropy float32
}

// FileRule is a rule that understands a kind of file (a .netrc, a docker config.json)
// rather than matching one regular expression.
type FileRule interface {
	ID() string
	// Applies reports whether the rule wants to look at the file at path.
	Applies(path string) bool
	// Scan returns hits in data; Line may be left 0 for the engine to fill in from Start.
	Scan(path string, data []byte) []Hit
}

const (
	// back is how far before a keyword hit a window may start (it starts at the hit's line
	// start when that is nearer): gitleaks rules allow at most ~50 identifier bytes before
	// their keyword.
	back = 256
	// forward is how far after a keyword hit a window reaches at most; it ends at the end of
	// the hit's line when that is nearer (a window never ends inside a line shorter than
	// this, where `$` would match a truncated secret).
	forward = 64 << 10
)

type rule struct {
	config.Rule
	find      *finder
	idx       int
	anchor    *anchoring // run at each keyword hit rather than over windows
	multiline bool       // the pattern spans lines: windows are not cut at the hit's line end
	wholeFile bool       // no keywords: the regex runs over the whole content
}

// Engine holds compiled rules. It is safe for concurrent use; each goroutine scans with its
// own Scanner.
type Engine struct {
	rules     []rule
	trie      *ahocorasick.Trie
	kwRules   [][]int // keyword pattern index -> rule indices
	global    []*config.Allowlist
	fileRules []FileRule
	// pathRE holds each allowlist's path patterns joined into one RE2 expression: the
	// standard library's version of the joined global list costs ~75µs per path.
	pathRE map[*config.Allowlist]stringMatcher
}

// New compiles cfg's rules (in cfg.OrderedRules order) and the given file rules.
func New(cfg config.Config, fileRules ...FileRule) *Engine {
	e := &Engine{global: cfg.Allowlists, fileRules: fileRules, pathRE: map[*config.Allowlist]stringMatcher{}}
	e.compileAllowlists(cfg.Allowlists)
	kwIndex := map[string]int{}
	var patterns []string
	ids := cfg.OrderedRules
	if len(ids) == 0 {
		for id := range cfg.Rules {
			ids = append(ids, id)
		}
		slices.Sort(ids)
	}
	for _, id := range ids {
		cr, ok := cfg.Rules[id]
		if !ok || cr.SkipReport {
			continue
		}
		r := rule{Rule: cr, idx: len(e.rules)}
		if cr.Regex != nil {
			src := cr.Regex.String()
			r.find = newFinder(cr.Regex)
			if strings.Contains(src, `[\s\S`) || strings.Contains(src, `(?s`) || strings.Contains(src, `(?is`) {
				r.multiline = true
			}
		}
		r.wholeFile = len(cr.Keywords) == 0
		if !r.multiline {
			r.anchor = anchorFor(cr)
		}
		e.compileAllowlists(cr.Allowlists)
		idx := len(e.rules)
		e.rules = append(e.rules, r)
		seen := map[string]bool{}
		for _, k := range cr.Keywords {
			k = strings.ToLower(k)
			if k == "" || seen[k] {
				continue
			}
			seen[k] = true
			pi, ok := kwIndex[k]
			if !ok {
				pi = len(patterns)
				kwIndex[k] = pi
				patterns = append(patterns, k)
				e.kwRules = append(e.kwRules, nil)
			}
			e.kwRules[pi] = append(e.kwRules[pi], idx)
		}
	}
	e.trie = ahocorasick.NewTrieBuilder().AddStrings(patterns).Build()
	return e
}

// RuleCount is the number of content and file rules.
func (e *Engine) RuleCount() int { return len(e.rules) + len(e.fileRules) }

// PathAllowed reports whether a global allowlist skips the file at path entirely (gitleaks'
// defaults skip lockfiles, go.sum, vendored and node_modules trees, images and fonts).
// Callers use it to avoid reading such files at all.
func (e *Engine) PathAllowed(path string) bool {
	return e.pathAllowed(e.global, path)
}

func (e *Engine) compileAllowlists(as []*config.Allowlist) {
	for _, a := range as {
		if len(a.Paths) == 0 {
			continue
		}
		srcs := make([]string, len(a.Paths))
		for i, p := range a.Paths {
			srcs[i] = "(?:" + p.String() + ")"
		}
		e.pathRE[a] = compileMatcher(strings.Join(srcs, "|"), a)
	}
}

func (e *Engine) pathAllowed(allowlists []*config.Allowlist, path string) bool {
	if path == "" {
		return false
	}
	for _, a := range allowlists {
		m, ok := e.pathRE[a]
		if !ok {
			continue
		}
		ok = m.MatchString(path)
		if a.MatchCondition == config.AllowlistMatchAnd {
			if len(a.Regexes) > 0 || len(a.StopWords) > 0 || len(a.Commits) > 0 || len(a.Paths) == 0 {
				continue
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// Scanner scans content with an Engine. It keeps scratch buffers between calls and is not
// safe for concurrent use.
type Scanner struct {
	e       *Engine
	lower   []byte
	cur     []span   // per rule: the window being grown
	wins    [][]span // per rule: finished windows
	touched []int
	newline []int
	data    []byte
	hits    []Hit
}

type span struct{ start, end int }

// NewScanner returns a Scanner for e.
func (e *Engine) NewScanner() *Scanner {
	return &Scanner{
		e:    e,
		cur:  make([]span, len(e.rules)),
		wins: make([][]span, len(e.rules)),
	}
}

// Scan returns the hits in data, the content (or a chunk of the content, starting at line
// startLine) of the file at path, ordered by position. The returned slice is only valid until
// the next call.
func (s *Scanner) Scan(path string, data []byte, startLine int) []Hit {
	s.hits = s.hits[:0]
	s.newline = s.newline[:0]
	s.data = data
	defer func() { s.data = nil }()
	e := s.e
	if e.pathAllowed(e.global, path) {
		return nil
	}
	for _, fr := range e.fileRules {
		if fr.Applies(path) {
			for _, h := range fr.Scan(path, data) {
				if h.Line == 0 {
					h.Line = s.line(h.Start, startLine)
				}
				s.hits = append(s.hits, h)
			}
		}
	}
	nFile := len(s.hits)

	// Path-only rules (e.g. a .p12 file) report the file itself.
	for i := range e.rules {
		r := &e.rules[i]
		if r.Regex == nil && r.Path != nil && matchPath(r.Path, path) && !e.pathAllowed(r.Allowlists, path) {
			s.hits = append(s.hits, Hit{RuleID: r.RuleID, Description: r.Description, Line: 0, Secret: "file detected: " + path})
		}
	}

	if len(data) > 0 {
		s.collectWindows(data)
		for _, ri := range s.touched {
			r := &e.rules[ri]
			if r.Regex == nil || (r.Path != nil && !matchPath(r.Path, path)) || e.pathAllowed(r.Allowlists, path) {
				continue
			}
			if r.anchor != nil {
				s.runAnchored(r, path, data, startLine)
				continue
			}
			last := -1
			for _, w := range s.wins[ri] {
				for _, m := range r.find.FindAllSubmatchIndex(data[w.start:w.end], -1) {
					start, end := w.start+m[0], w.start+m[1]
					if start < last {
						continue
					}
					last = end
					s.accept(r, path, w.start, m, startLine)
				}
			}
		}
	}
	s.sortAndDedupe(nFile)
	return s.hits
}

// collectWindows runs the keyword pass and leaves, for every rule with a hit, its merged
// windows in s.wins and the rule in s.touched.
func (s *Scanner) collectWindows(data []byte) {
	for _, ri := range s.touched {
		s.wins[ri] = s.wins[ri][:0]
		s.cur[ri] = span{}
	}
	s.touched = s.touched[:0]
	e := s.e
	for i := range e.rules {
		if e.rules[i].wholeFile && e.rules[i].Regex != nil {
			s.touched = append(s.touched, i)
			s.wins[i] = append(s.wins[i][:0], span{0, len(data)})
		}
	}
	if cap(s.lower) < len(data) {
		s.lower = make([]byte, len(data))
	}
	lower := s.lower[:len(data)]
	for i, c := range data {
		lower[i] = lowerTable[c]
	}
	e.trie.Walk(lower, func(end, n, pattern int64) bool {
		pos := int(end - n + 1)
		for _, ri := range e.kwRules[pattern] {
			s.addWindow(ri, data, pos, int(n))
		}
		return true
	})
	for _, ri := range s.touched {
		if c := s.cur[ri]; c.end > c.start {
			s.wins[ri] = append(s.wins[ri], c)
		}
	}
}

func (s *Scanner) addWindow(ri int, data []byte, pos, n int) {
	c := &s.cur[ri]
	if s.e.rules[ri].anchor != nil {
		// Anchored rules keep every hit (start, keyword end).
		if len(s.wins[ri]) == 0 && c.end == 0 {
			s.touched = append(s.touched, ri)
		}
		if w := s.wins[ri]; len(w) > 0 && w[len(w)-1].start == pos {
			return
		}
		s.wins[ri] = append(s.wins[ri], span{pos, pos + n})
		return
	}
	if c.end > c.start && pos+n <= c.end-64 {
		// Already well inside the current window.
		return
	}
	r := &s.e.rules[ri]
	if r.wholeFile {
		return
	}
	start := max(0, pos-back)
	if i := bytes.LastIndexByte(data[start:pos], '\n'); i >= 0 {
		start += i + 1
	}
	end := min(len(data), pos+n+forward)
	if !r.multiline {
		if i := bytes.IndexByte(data[pos+n:end], '\n'); i >= 0 {
			end = pos + n + i + 1
		}
	}
	if c.end == 0 && c.start == 0 {
		if len(s.wins[ri]) == 0 {
			s.touched = append(s.touched, ri)
		}
		*c = span{start, end}
		return
	}
	if start <= c.end {
		c.end = max(c.end, end)
		return
	}
	s.wins[ri] = append(s.wins[ri], *c)
	*c = span{start, end}
}

// runAnchored runs an anchored rule at each of its keyword hits.
func (s *Scanner) runAnchored(r *rule, path string, data []byte, startLine int) {
	a := r.anchor
	last := -1
	var m []int
	for _, h := range s.wins[r.idx] {
		pos := h.start
		if pos < last {
			continue
		}
		if a.wordBoundary && pos > 0 && isWordByte(data[pos-1]) {
			continue
		}
		if a.back > 0 && !assignmentNear(data, h.end) {
			continue
		}
		// The match may run to the end of the line after the hit's (an assignment may
		// break a line), never further than forward bytes.
		end := min(len(data), pos+forward)
		if i := bytes.IndexByte(data[h.end:end], '\n'); i >= 0 {
			next := h.end + i + 1
			if j := bytes.IndexByte(data[next:end], '\n'); j >= 0 {
				end = next + j + 1
			}
		}
		m = a.re.FindSubmatchIndex(data[pos:end])
		if m == nil {
			continue
		}
		start := pos
		if a.back > 0 {
			lo := max(0, pos-a.back)
			for start > lo && isIdentByte(data[start-1]) {
				start--
			}
		}
		m[0] = start - pos
		if start < last {
			continue
		}
		last = pos + m[1]
		s.accept(r, path, pos, m, startLine)
	}
}

// assignmentNear reports whether one of the operators a semi-generic rule needs after its
// keyword (=, :, >, |, ,) follows within reach: the keyword's alternative may be up to ~30
// bytes longer than the keyword hit, then come up to 20 identifier and 3 quote or space bytes.
func assignmentNear(data []byte, from int) bool {
	to := min(len(data), from+56)
	return bytes.IndexAny(data[from:to], "=:>|,") >= 0
}

// accept applies gitleaks' per-match checks to the match m (submatch offsets from base) of
// rule r.
func (s *Scanner) accept(r *rule, path string, base int, m []int, startLine int) {
	data := s.data
	start, end := base+m[0], base+m[1]
	match := strings.Trim(string(data[start:end]), "\n")
	if match == "" {
		return
	}
	lineStart := bytes.LastIndexByte(data[:start], '\n') + 1
	lineEnd := end
	if i := bytes.IndexAny(data[end:], "\n\r"); i >= 0 {
		lineEnd = end + i
	} else {
		lineEnd = len(data)
	}
	line := string(data[lineStart:lineEnd])
	if strings.Contains(line, "gitleaks:allow") {
		return
	}
	// The secret is the rule's secretGroup, or else its first non-empty group, or else the
	// whole match (gitleaks re-matches the trimmed match; the groups are the same).
	secret := match
	group := func(i int) string {
		if 2*i+1 >= len(m) || m[2*i] < 0 {
			return ""
		}
		return string(data[base+m[2*i] : base+m[2*i+1]])
	}
	if groups := len(m)/2 - 1; groups >= 1 {
		if r.SecretGroup > 0 {
			if groups < r.SecretGroup {
				return
			}
			secret = group(r.SecretGroup)
		} else {
			for i := 1; i <= groups; i++ {
				if g := group(i); g != "" {
					secret = g
					break
				}
			}
		}
	}
	entropy := ShannonEntropy(secret)
	if r.Entropy != 0 && entropy <= r.Entropy {
		return
	}
	if findingAllowed(s.e.global, path, secret, match, line) || findingAllowed(r.Allowlists, path, secret, match, line) {
		return
	}
	s.hits = append(s.hits, Hit{
		RuleID:      r.RuleID,
		Description: r.Description,
		Start:       start,
		End:         end,
		Line:        s.line(start, startLine),
		Secret:      secret,
		Entropy:     float32(entropy),
	})
}

// findingAllowed is gitleaks' checkFindingAllowed for content without commits.
func findingAllowed(allowlists []*config.Allowlist, path, secret, match, line string) bool {
	for _, a := range allowlists {
		target := secret
		switch a.RegexTarget {
		case "match":
			target = match
		case "line":
			target = line
		}
		regexAllowed := a.RegexAllowed(target)
		stop, _ := a.ContainsStopWord(secret)
		if a.MatchCondition == config.AllowlistMatchAnd {
			all := true
			if len(a.Commits) > 0 {
				all = false // no commits here, so a commit condition never holds
			}
			if len(a.Paths) > 0 && !a.PathAllowed(path) {
				all = false
			}
			if len(a.Regexes) > 0 && !regexAllowed {
				all = false
			}
			if len(a.StopWords) > 0 && !stop {
				all = false
			}
			if all {
				return true
			}
			continue
		}
		if regexAllowed || stop {
			return true
		}
	}
	return false
}

type pathMatcher interface{ MatchString(string) bool }

func matchPath(re pathMatcher, path string) bool { return re.MatchString(path) }

// line returns the 1-based line number of offset off, counting from startLine.
func (s *Scanner) line(off, startLine int) int {
	if startLine == 0 {
		startLine = 1
	}
	if len(s.newline) == 0 {
		s.newline = append(s.newline, -1)
		for i := 0; ; {
			j := bytes.IndexByte(s.data[i:], '\n')
			if j < 0 {
				break
			}
			s.newline = append(s.newline, i+j)
			i += j + 1
		}
	}
	n, _ := slices.BinarySearch(s.newline, off)
	return startLine + n - 1
}

// sortAndDedupe orders hits by position and drops redundant ones: a regex hit overlapping a
// file rule's hit (the file rule names the credential better), and — as gitleaks does — a
// generic rule's hit whose secret a specific rule's hit on the same line contains.
func (s *Scanner) sortAndDedupe(nFile int) {
	drop := func(i int, h Hit) bool {
		for _, f := range s.hits[:nFile] {
			if h.Start < f.End && f.Start < h.End {
				return true
			}
		}
		if !strings.Contains(strings.ToLower(h.RuleID), "generic") {
			return false
		}
		for j, o := range s.hits {
			if j != i && o.Line == h.Line && o.RuleID != h.RuleID && strings.Contains(o.Secret, h.Secret) &&
				!strings.Contains(strings.ToLower(o.RuleID), "generic") {
				return true
			}
		}
		return false
	}
	out := make([]Hit, 0, len(s.hits))
	for i, h := range s.hits {
		if i < nFile || !drop(i, h) {
			out = append(out, h)
		}
	}
	s.hits = append(s.hits[:0], out...)
	slices.SortStableFunc(s.hits, func(a, b Hit) int {
		if a.Start != b.Start {
			return a.Start - b.Start
		}
		return strings.Compare(a.RuleID, b.RuleID)
	})
}

// ShannonEntropy is gitleaks' entropy measure (bits per byte over the string's runes).
func ShannonEntropy(data string) float64 {
	if data == "" {
		return 0
	}
	counts := map[rune]int{}
	for _, c := range data {
		counts[c]++
	}
	inv := 1.0 / float64(len(data))
	var h float64
	for _, n := range counts {
		f := float64(n) * inv
		h -= f * math.Log2(f)
	}
	return h
}

var lowerTable = func() (t [256]byte) {
	for i := range t {
		c := byte(i)
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		t[i] = c
	}
	return t
}()
