package match

import (
	"os"
	"regexp"

	re2 "github.com/wasilibs/go-re2"
)

// finder locates a rule's matches in a window.
type finder interface {
	FindAllIndex(b []byte, n int) [][]int
}

// compileFinder returns RE2 (through go-re2) for src when it compiles there, else the
// standard library's compiled std.
func compileFinder(src string, std *regexp.Regexp) finder {
	if os.Getenv("NORE2") != "" {
		return std
	}
	if re, err := re2.Compile(src); err == nil {
		return re
	}
	return std
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
