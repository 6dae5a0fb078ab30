package injector

import (
	"encoding/json"
	"math"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// podPatch answers with the JSON patch that turns before into after, computed by
// controller-runtime's PatchResponseFromRaw. Diffing two whole pods cost most of a review: the
// diff decodes both documents into generic maps and walks them. So prune first drops from both
// typed pods every part that is equal in the two, and the diff sees only what Mutate changed;
// the patch found for a pruned pair is remembered in cache. prune consumes both pods.
//
// Both documents are encoded from the typed pods. A field in the review that this build's
// corev1 does not know (an API server newer than the webhook) is therefore absent from both and
// left alone by the patch, where a diff against the review's bytes would remove it.
func podPatch(before, after *corev1.Pod, cache *byteCache[[]byte]) (admission.Response, error) {
	prune(reflect.ValueOf(before), reflect.ValueOf(after))
	a, err := json.Marshal(before)
	if err != nil {
		return admission.Response{}, err
	}
	b, err := json.Marshal(after)
	if err != nil {
		return admission.Response{}, err
	}
	key := append(append(a, 0), b...) // NUL appears in no JSON document
	patch, ok := cache.get(key)
	if !ok {
		resp := admission.PatchResponseFromRaw(a, b)
		if !resp.Allowed || len(resp.Patches) == 0 {
			return resp, nil
		}
		patch = appendPatch(make([]byte, 0, len(b)), resp.Patches)
		cache.put(key, patch)
	}
	pt := admissionv1.PatchTypeJSONPatch
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: true, PatchType: &pt, Patch: patch}}, nil
}

// prune removes from a and b, two values of one type, every part that is equal in both: struct
// fields are zeroed, map entries deleted, and slice elements zeroed in place so that the others
// keep their index. It reports whether a and b were equal, in which case the caller zeroes them
// whole. The diff behind PatchResponseFromRaw (gomodules.xyz/jsonpatch) compares object members
// by key and array elements by index, and finds nothing in two equal values, so its answer for
// the pruned pair is its answer for the whole pair; TestPodPatchPruned and FuzzPodPatch check
// that. Types with their own JSON encoding (Quantity, Time, IntOrString) are compared whole.
// a and b are reached through pointers, and prune walks only structs whose fields are all
// exported, so every field and element it zeroes is settable.
func prune(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return prune(a.Elem(), b.Elem())
	case reflect.Struct:
		if !walkable(a.Type()) {
			return reflect.DeepEqual(a.Interface(), b.Interface())
		}
		equal := true
		for i := range a.NumField() {
			equal = pruneOrZero(a.Field(i), b.Field(i)) && equal
		}
		return equal
	case reflect.Slice:
		if a.IsNil() != b.IsNil() {
			return false
		}
		equal := a.Len() == b.Len()
		for i := range min(a.Len(), b.Len()) {
			equal = pruneOrZero(a.Index(i), b.Index(i)) && equal
		}
		return equal
	case reflect.Map:
		return pruneMap(a, b)
	case reflect.String:
		return a.String() == b.String()
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return a.Uint() == b.Uint()
	default:
		return reflect.DeepEqual(a.Interface(), b.Interface())
	}
}

// pruneOrZero prunes two settable values, and zeroes them when they are equal.
func pruneOrZero(a, b reflect.Value) bool {
	if !prune(a, b) {
		return false
	}
	a.SetZero()
	b.SetZero()
	return true
}

// pruneMap deletes the entries equal in a and b. An empty map is not encoded (omitempty): the
// diff would see it vanish and replace or remove the whole map. So unless the maps are equal
// (the caller then zeroes both), one equal entry stays when either would become empty.
func pruneMap(a, b reflect.Value) bool {
	if a.IsNil() != b.IsNil() {
		return false
	}
	var equal []reflect.Value
	for _, k := range a.MapKeys() {
		bv := b.MapIndex(k)
		if !bv.IsValid() {
			continue
		}
		av := a.MapIndex(k)
		if av.Kind() == reflect.String && av.String() == bv.String() ||
			av.Kind() != reflect.String && reflect.DeepEqual(av.Interface(), bv.Interface()) {
			equal = append(equal, k)
		}
	}
	if len(equal) == a.Len() && len(equal) == b.Len() {
		return true
	}
	if len(equal) > 0 && (len(equal) == a.Len() || len(equal) == b.Len()) {
		// The first key in order, so that equal pairs prune alike (the patch cache's key).
		first := 0
		for i, k := range equal {
			if k.String() < equal[first].String() {
				first = i
			}
		}
		equal = slices.Delete(equal, first, first+1)
	}
	for _, k := range equal {
		a.SetMapIndex(k, reflect.Value{})
		b.SetMapIndex(k, reflect.Value{})
	}
	return false
}

var (
	walkableTypes sync.Map // reflect.Type → bool
	marshalerType = reflect.TypeFor[json.Marshaler]()
)

// walkable reports whether prune may take a struct of type t apart: every field exported, and
// no JSON encoding of its own.
func walkable(t reflect.Type) bool {
	if w, ok := walkableTypes.Load(t); ok {
		return w.(bool)
	}
	w := !reflect.PointerTo(t).Implements(marshalerType)
	for i := range t.NumField() {
		w = w && t.Field(i).IsExported()
	}
	walkableTypes.Store(t, w)
	return w
}

// appendPatch encodes JSON patch operations as their MarshalJSON does, without the reflection,
// map key sorting and re-compaction that made encoding/json a quarter of a review. A value is
// what the diff decoded: nil, bool, float64, string, []any or map[string]any.
func appendPatch(dst []byte, ops []jsonpatch.Operation) []byte {
	dst = append(dst, '[')
	for i, op := range ops {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"op":`...)
		dst = appendString(dst, op.Operation)
		dst = append(dst, `,"path":`...)
		dst = appendString(dst, op.Path)
		if op.Value != nil || op.Operation == "add" || op.Operation == "replace" {
			dst = append(dst, `,"value":`...)
			dst = appendValue(dst, op.Value)
		}
		dst = append(dst, '}')
	}
	return append(dst, ']')
}

func appendValue(dst []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(dst, "null"...)
	case bool:
		return strconv.AppendBool(dst, v)
	case float64:
		return appendFloat(dst, v)
	case string:
		return appendString(dst, v)
	case []any:
		dst = append(dst, '[')
		for i, e := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendValue(dst, e)
		}
		return append(dst, ']')
	case map[string]any:
		dst = append(dst, '{')
		first := true
		for k, e := range v {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendValue(dst, e)
		}
		return append(dst, '}')
	default:
		// Not produced by decoding JSON into any; keep encoding/json's answer.
		b, err := json.Marshal(v)
		if err != nil {
			return append(dst, "null"...)
		}
		return append(dst, b...)
	}
}

// appendFloat formats f as encoding/json does. Decoded JSON numbers are always finite.
func appendFloat(dst []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

// appendString quotes s as encoding/json does: HTML characters, U+2028 and U+2029 escaped,
// invalid UTF-8 replaced.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, `\b`...)
			case '\f':
				dst = append(dst, `\f`...)
			case '\n':
				dst = append(dst, `\n`...)
			case '\r':
				dst = append(dst, `\r`...)
			case '\t':
				dst = append(dst, `\t`...)
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
