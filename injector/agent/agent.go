// Package agent is the library behind sidekey-agent: it fetches the documents a spec names from
// its backends, renders each secret file (raw value, JSON of all keys, or the pod's template),
// writes it atomically into the pod's tmpfs, keeps it fresh and tells the app when it changed.
//
// Backends (Vault, AWS) live in subpackages behind the one Backend interface declared here.
// Nothing in this package logs a secret value, a token or a raw backend response.
package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/sidekey/sidekey/injector/spec"
)

// Backend fetches whole documents from one secret store. The agent strips the key from every
// source before asking (a document is read once however many keys of it are used), so srcs
// name documents; Fetch answers one Result per source, in order.
type Backend interface {
	Fetch(ctx context.Context, srcs []spec.Source) []Result
}

// Closer is implemented by backends that release something on shutdown (Vault leases).
type Closer interface {
	Close(ctx context.Context) error
}

// Result is one document or the reason it could not be read. Err never contains the value.
type Result struct {
	Doc Document
	Err error
}

// Document is one secret as its backend stores it.
type Document struct {
	// Data holds the keys when the document is a key/value object: Vault data, a Secrets
	// Manager string holding a JSON object.
	Data map[string]any
	// Raw is the document's bytes as stored, when it has them (AWS); a whole-document file is
	// Raw when set, else Data as JSON.
	Raw []byte
	// Refetch, when set, asks the agent to call Fetch for this document again at that time
	// (lease and token renewal); otherwise it is read again at the next refresh.
	Refetch time.Time
	// LeaseExpiry is when the lease of a dynamic secret ends; zero for static secrets.
	LeaseExpiry time.Time
}

// Options tune an Agent.
type Options struct {
	Logger  *slog.Logger
	Writer  *Writer
	Notify  Notifier         // nil: no notification
	Metrics *Metrics         // nil: a fresh one
	Backoff Backoff          // zero: DefaultBackoff
	Now     func() time.Time // for tests; nil: time.Now
	Refresh time.Duration    // zero: the spec's
}

// Agent renders one spec's secrets and keeps them fresh.
type Agent struct {
	spec     *spec.Spec
	backends map[string]Backend
	log      *slog.Logger
	w        *Writer
	notify   Notifier
	metrics  *Metrics
	backoff  Backoff
	now      func() time.Time
	refresh  time.Duration

	tmpls map[string]*template.Template // by secret name
	docs  map[spec.Source]*docState     // by document (source without key)
}

type docState struct {
	backend string
	doc     Document
	have    bool
	err     error
	fails   int
	due     time.Time
}

// New checks that every source has a backend, parses the templates and returns an Agent.
func New(s *spec.Spec, backends map[string]Backend, o Options) (*Agent, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Writer == nil {
		return nil, errors.New("agent: no writer")
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics()
	}
	if o.Backoff == (Backoff{}) {
		o.Backoff = DefaultBackoff
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Refresh == 0 {
		o.Refresh = time.Duration(s.Refresh)
	}
	if o.Refresh <= 0 {
		o.Refresh = 5 * time.Minute
	}
	a := &Agent{
		spec: s, backends: backends, log: o.Logger, w: o.Writer, notify: o.Notify,
		metrics: o.Metrics, backoff: o.Backoff, now: o.Now, refresh: o.Refresh,
		tmpls: map[string]*template.Template{}, docs: map[spec.Source]*docState{},
	}
	for _, sec := range s.Secrets {
		if sec.Template != "" {
			t, _, err := spec.ParseTemplate(sec.Name, sec.Template)
			if err != nil {
				return nil, fmt.Errorf("secret %q: %w", sec.Name, err)
			}
			a.tmpls[sec.Name] = t
		}
		for _, src := range sec.All() {
			if _, ok := backends[src.Backend]; !ok {
				return nil, fmt.Errorf("secret %q: no %s backend configured for %s", sec.Name, src.Backend, src)
			}
			d := docOf(src)
			if _, ok := a.docs[d]; !ok {
				a.docs[d] = &docState{backend: src.Backend}
			}
		}
	}
	return a, nil
}

// docOf is the document a source reads: the source without its key.
func docOf(s spec.Source) spec.Source {
	s.Key = ""
	return s
}

// Ready reports whether every secret has been written at least once.
func (a *Agent) Ready() bool {
	return a.metrics.Ready()
}

// Metrics returns the agent's metrics.
func (a *Agent) Metrics() *Metrics { return a.metrics }

// SecretError names one secret that could not be written and why.
type SecretError struct {
	Secret string
	File   string
	Err    error
}

func (e *SecretError) Error() string {
	return fmt.Sprintf("secret %q (file %s): %v", e.Secret, e.File, e.Err)
}

func (e *SecretError) Unwrap() error { return e.Err }

// Sync fetches every document that is due (all of them on the first call), writes every
// secret whose content changed and notifies the app when a file it already had changed. It
// returns, joined, the secrets that could not be written or whose refresh failed; their
// files are left as they were (the last good value). The agent is ready once every file has
// been written.
func (a *Agent) Sync(ctx context.Context) error {
	now := a.now()
	a.fetchDue(ctx, now)

	var (
		errs     []error
		changed  []string
		complete = true // every file is written, possibly from last good values
	)
	for _, sec := range a.spec.Secrets {
		content, err := a.render(sec)
		if err != nil {
			complete = false
			a.metrics.errorInc(sec.Name)
			errs = append(errs, &SecretError{Secret: sec.Name, File: sec.File, Err: err})
			continue
		}
		ch, existed, err := a.w.Write(sec.File, content, sec.Mode, sec.UID, sec.GID)
		if err != nil {
			complete = false
			a.metrics.errorInc(sec.Name)
			errs = append(errs, &SecretError{Secret: sec.Name, File: sec.File, Err: err})
			continue
		}
		if stale := a.staleErr(sec); stale != nil {
			// Written from the last good documents: the file is fine, the refresh is not.
			errs = append(errs, &SecretError{Secret: sec.Name, File: sec.File, Err: stale})
		} else {
			a.metrics.success(sec.Name, a.now(), a.leaseExpiry(sec))
		}
		if ch {
			a.metrics.renderInc(sec.Name)
			a.log.Info("wrote secret file", "secret", sec.Name, "file", sec.File, "sha256", shortHash(content))
			if existed {
				changed = append(changed, sec.Name)
			}
		}
	}
	if complete {
		a.metrics.setReady(true)
	}
	if len(changed) > 0 && a.notify != nil {
		if err := a.notify.Notify(ctx, changed); err != nil {
			a.metrics.notifyErrorInc()
			a.log.Warn("notify the app of changed secrets", "secrets", changed, "err", err)
		} else {
			a.log.Info("notified the app", "secrets", changed)
		}
	}
	return errors.Join(errs...)
}

func shortHash(b []byte) string {
	h := sha256.Sum256(b)
	return fmt.Sprintf("%x", h[:6])
}

// fetchDue asks each backend, once, for all its documents that are due.
func (a *Agent) fetchDue(ctx context.Context, now time.Time) {
	byBackend := map[string][]spec.Source{}
	for d, st := range a.docs {
		if !st.have || !now.Before(st.due) {
			byBackend[st.backend] = append(byBackend[st.backend], d)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(byBackend)) {
		srcs := byBackend[name]
		sort.Slice(srcs, func(i, j int) bool { return srcs[i].String() < srcs[j].String() })
		res := a.backends[name].Fetch(ctx, srcs)
		for i, src := range srcs {
			st := a.docs[src]
			var r Result
			if i < len(res) {
				r = res[i]
			} else {
				r.Err = fmt.Errorf("%s backend gave no answer", name)
			}
			if r.Err != nil {
				st.err = r.Err
				st.fails++
				st.due = now.Add(a.backoff.Delay(st.fails))
				a.metrics.fetchErrorInc(name)
				a.log.Warn("fetch failed; keeping the last good file", "source", src.String(), "attempt", st.fails, "retry_in", st.due.Sub(now).Round(time.Millisecond), "err", r.Err)
				continue
			}
			if st.fails > 0 {
				a.log.Info("fetch recovered", "source", src.String(), "after_failures", st.fails)
			}
			st.doc, st.have, st.err, st.fails = r.Doc, true, nil, 0
			st.due = now.Add(jitter(a.refresh, 0.1))
			if !r.Doc.Refetch.IsZero() && r.Doc.Refetch.Before(st.due) {
				st.due = r.Doc.Refetch
			}
		}
	}
}

// NextDue is when the next document is due to be fetched.
func (a *Agent) NextDue() time.Time {
	var next time.Time
	for _, st := range a.docs {
		if next.IsZero() || st.due.Before(next) {
			next = st.due
		}
	}
	return next
}

// staleErr reports the refresh failures of the documents a secret reads, if any.
func (a *Agent) staleErr(sec spec.Secret) error {
	var errs []error
	for _, src := range sec.All() {
		if st := a.docs[docOf(src)]; st != nil && st.err != nil {
			errs = append(errs, fmt.Errorf("refresh %s failed, last good value kept: %w", docOf(src), st.err))
		}
	}
	return errors.Join(errs...)
}

func (a *Agent) leaseExpiry(sec spec.Secret) time.Time {
	var exp time.Time
	for _, src := range sec.All() {
		if st := a.docs[docOf(src)]; st != nil && !st.doc.LeaseExpiry.IsZero() {
			if exp.IsZero() || st.doc.LeaseExpiry.Before(exp) {
				exp = st.doc.LeaseExpiry
			}
		}
	}
	return exp
}

// render builds a secret's file content from the documents in hand. A document that failed
// with nothing good in hand fails the secret; a document that failed after an earlier success
// keeps serving its last good value.
func (a *Agent) render(sec spec.Secret) ([]byte, error) {
	lookup := func(src spec.Source) (any, error) {
		st := a.docs[docOf(src)]
		if st == nil {
			return nil, fmt.Errorf("%s is not listed in the secret's sources", src)
		}
		if !st.have {
			if st.err != nil {
				return nil, fmt.Errorf("read %s: %w", src, st.err)
			}
			return nil, fmt.Errorf("read %s: not fetched yet", src)
		}
		return value(st.doc, src)
	}
	if sec.Source != nil {
		if st := a.docs[docOf(*sec.Source)]; sec.Source.Key == "" && st != nil && st.have && st.doc.Raw != nil {
			return st.doc.Raw, nil
		}
		v, err := lookup(*sec.Source)
		if err != nil {
			return nil, err
		}
		return contentOf(v)
	}
	t := a.tmpls[sec.Name]
	var buf bytes.Buffer
	if err := t.Funcs(spec.FuncMap(lookup)).Execute(&buf, nil); err != nil {
		return nil, fmt.Errorf("render template: %w", redactExec(err))
	}
	return buf.Bytes(), nil
}

// redactExec keeps a template execution error's location and drops anything after it that
// could quote data (text/template quotes values in some messages, e.g. bad index).
func redactExec(err error) error {
	var ee template.ExecError
	if errors.As(err, &ee) {
		msg := ee.Err.Error()
		if strings.Contains(msg, "read ") || strings.Contains(msg, "key ") {
			return err // our own lookup errors name sources and keys, never values
		}
		return fmt.Errorf("template %s failed at %s (details withheld: they may quote secret data)", ee.Name, location(ee.Error()))
	}
	return err
}

func location(msg string) string {
	// "template: name:1:23: executing ..." -> "name:1:23"
	msg = strings.TrimPrefix(msg, "template: ")
	if i := strings.Index(msg, ": "); i > 0 {
		return msg[:i]
	}
	return "?"
}

// value returns what a source means in a document: the whole document as a map (or its raw
// string when it is not key/value), or one key's value as a string.
func value(d Document, src spec.Source) (any, error) {
	if src.Key == "" {
		if d.Data != nil {
			return d.Data, nil
		}
		return string(d.Raw), nil
	}
	if d.Data == nil {
		return nil, fmt.Errorf("%s: the secret is not a JSON object, so it has no key %q; drop the #%s", src, src.Key, src.Key)
	}
	v, ok := d.Data[src.Key]
	if !ok {
		return nil, fmt.Errorf("%s: key %q not found (the secret has keys %s)", src, src.Key, strings.Join(slices.Sorted(maps.Keys(d.Data)), ", "))
	}
	if s, ok := v.(string); ok {
		return s, nil
	}
	b, err := jsonMarshal(v)
	if err != nil {
		return nil, fmt.Errorf("%s: encode key %q: %w", src, src.Key, err)
	}
	return string(b), nil
}

// contentOf turns a looked-up value into file bytes: strings as they are, maps as JSON.
func contentOf(v any) ([]byte, error) {
	switch v := v.(type) {
	case string:
		return []byte(v), nil
	default:
		b, err := jsonMarshal(v)
		if err != nil {
			return nil, fmt.Errorf("encode secret as JSON: %w", err)
		}
		return b, nil
	}
}
