package match

import (
	"regexp"
	"sync"
	"unicode/utf8"

	re2 "github.com/wasilibs/go-re2"
)

// finder locates a rule's matches in a window. RE2 (go-re2) runs gitleaks' patterns several
// times faster than the standard library, but stops at the first invalid UTF-8 byte, so
// windows that are not valid UTF-8 go to the standard library's engine. RE2 programs are
// compiled on first use: most rules never see a keyword hit in a given scan.
type finder struct {
	std  *regexp.Regexp
	once sync.Once
	re2  *re2.Regexp
}

func newFinder(std *regexp.Regexp) *finder { return &finder{std: std} }

// FindAllSubmatchIndex is regexp's: RE2 finds a match with its DFA and extracts groups only
// within the match.
func (f *finder) FindAllSubmatchIndex(b []byte, n int) [][]int {
	f.once.Do(func() {
		if re, err := re2.Compile(f.std.String()); err == nil {
			f.re2 = re
		}
	})
	if f.re2 == nil || !utf8.Valid(b) {
		return f.std.FindAllSubmatchIndex(b, n)
	}
	return f.re2.FindAllSubmatchIndex(b, n)
}

// FindSubmatchIndex is for anchored runs on a few hundred bytes at a keyword hit: the
// standard library, whose per-call cost is lower than RE2's through WebAssembly, and which
// needs no WebAssembly module instance per rule.
func (f *finder) FindSubmatchIndex(b []byte) []int {
	return f.std.FindSubmatchIndex(b)
}

type stringMatcher interface{ MatchString(string) bool }

// compileMatcher compiles src with RE2, falling back to the allowlist's own check.
func compileMatcher(src string, fallback interface{ PathAllowed(string) bool }) stringMatcher {
	if re, err := re2.Compile(src); err == nil {
		return re
	}
	return matcherFunc(fallback.PathAllowed)
}

type matcherFunc func(string) bool

func (f matcherFunc) MatchString(s string) bool { return f(s) }
