package match

import (
	"regexp"
	"regexp/syntax"
	"strings"

	"github.com/zricethezav/gitleaks/v8/config"
)

// semiGeneric is how gitleaks' "semi-generic" rules (generic-api-key and ~95 service rules)
// begin: up to 50 identifier bytes, then one of the rule's keywords.
const semiGeneric = `(?i)[\w.-]{0,50}?`

// anchoring tells how a rule's matches relate to its keyword hits, when they do in a way
// that lets the rule run at each hit instead of over windows:
//
//   - a semi-generic rule's match is its keyword hit, preceded by up to 50 [\w.-] bytes;
//     the rest of the pattern runs anchored at the hit and the match is extended backwards.
//   - a rule whose every match begins with one of its keywords (after an optional \b) runs
//     anchored at each hit.
//
// Anchored runs cost a few bytes per hit instead of a regex pass over every line that
// mentions "key", "token" or "s.".
type anchoring struct {
	re           *finder
	back         int  // >0: extend the match backwards over up to back [\w.-] bytes
	wordBoundary bool // the pattern starts with \b: the byte before the hit must not be a word byte
}

func anchorFor(r config.Rule) *anchoring {
	if r.Regex == nil || len(r.Keywords) == 0 {
		return nil
	}
	src := r.Regex.String()
	if rest, ok := strings.CutPrefix(src, semiGeneric); ok {
		re, err := regexp.Compile(`(?i)^` + rest)
		if err != nil || re.NumSubexp() != r.Regex.NumSubexp() {
			return nil
		}
		return &anchoring{re: newFinder(re), back: 50}
	}
	prefixes, wb, ok := literalPrefixes(src)
	if !ok {
		return nil
	}
	for _, p := range prefixes {
		p = strings.ToLower(p)
		found := false
		for _, k := range r.Keywords {
			if strings.HasPrefix(p, strings.ToLower(k)) {
				found = true
				break
			}
		}
		if !found {
			return nil
		}
	}
	re, err := regexp.Compile(`^(?:` + src + `)`)
	if err != nil || re.NumSubexp() != r.Regex.NumSubexp() {
		return nil
	}
	return &anchoring{re: newFinder(re), wordBoundary: wb}
}

// literalPrefixes returns the literal every match of src starts with, one per alternative,
// and whether the pattern starts with \b. ok is false when some match could start otherwise.
func literalPrefixes(src string) (prefixes []string, wordBoundary, ok bool) {
	re, err := syntax.Parse(src, syntax.Perl)
	if err != nil {
		return nil, false, false
	}
	var walk func(n *syntax.Regexp, top bool) bool
	walk = func(n *syntax.Regexp, top bool) bool {
		switch n.Op {
		case syntax.OpLiteral:
			if len(n.Rune) == 0 {
				return false
			}
			prefixes = append(prefixes, string(n.Rune))
			return true
		case syntax.OpCapture:
			return walk(n.Sub[0], top)
		case syntax.OpAlternate:
			for _, s := range n.Sub {
				if !walk(s, false) {
					return false
				}
			}
			return true
		case syntax.OpConcat:
			subs := n.Sub
			for len(subs) > 0 && subs[0].Op == syntax.OpWordBoundary {
				if !top {
					return false
				}
				wordBoundary = true
				subs = subs[1:]
			}
			if len(subs) == 0 {
				return false
			}
			return walk(subs[0], top)
		}
		return false
	}
	if !walk(re, true) {
		return nil, false, false
	}
	return prefixes, wordBoundary, true
}

func isWordByte(c byte) bool {
	return c == '_' || ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

func isIdentByte(c byte) bool { return isWordByte(c) || c == '.' || c == '-' }
