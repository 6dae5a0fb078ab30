package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Metrics are the agent's Prometheus metrics, exposed in the text format by a few lines of
// code rather than the client library, to keep the agent small. Labels are secret and
// backend names from the spec, never values.
type Metrics struct {
	mu           sync.Mutex
	renders      map[string]float64 // by secret: files (re)written
	errors       map[string]float64 // by secret: render or write failures
	fetchErrors  map[string]float64 // by backend
	lastSuccess  map[string]time.Time
	leaseExpiry  map[string]time.Time
	notifyErrors float64
	ready        bool
	now          func() time.Time
}

// NewMetrics returns empty metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		renders: map[string]float64{}, errors: map[string]float64{}, fetchErrors: map[string]float64{},
		lastSuccess: map[string]time.Time{}, leaseExpiry: map[string]time.Time{}, now: time.Now,
	}
}

func (m *Metrics) renderInc(secret string) { m.mu.Lock(); m.renders[secret]++; m.mu.Unlock() }
func (m *Metrics) errorInc(secret string)  { m.mu.Lock(); m.errors[secret]++; m.mu.Unlock() }
func (m *Metrics) fetchErrorInc(b string)  { m.mu.Lock(); m.fetchErrors[b]++; m.mu.Unlock() }
func (m *Metrics) notifyErrorInc()         { m.mu.Lock(); m.notifyErrors++; m.mu.Unlock() }
func (m *Metrics) setReady(r bool)         { m.mu.Lock(); m.ready = r; m.mu.Unlock() }

func (m *Metrics) success(secret string, at, leaseExpiry time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastSuccess[secret] = at
	if !leaseExpiry.IsZero() {
		m.leaseExpiry[secret] = leaseExpiry
	}
}

// Ready reports whether the first complete render is done.
func (m *Metrics) Ready() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ready
}

// Renders returns how many times the secret's file was written.
func (m *Metrics) Renders(secret string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.renders[secret]
}

// FetchErrors returns how many fetches from the backend failed.
func (m *Metrics) FetchErrors(backend string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fetchErrors[backend]
}

// WriteText writes the metrics in the Prometheus text exposition format.
func (m *Metrics) WriteText(w io.Writer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	family := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	series := func(name, label string, vals map[string]float64) {
		for _, k := range slices.Sorted(maps.Keys(vals)) {
			fmt.Fprintf(&b, "%s{%s=%q} %s\n", name, label, k, strconv.FormatFloat(vals[k], 'g', -1, 64))
		}
	}
	family("sidekey_agent_renders_total", "counter", "Secret files written because their content changed.")
	series("sidekey_agent_renders_total", "secret", m.renders)
	family("sidekey_agent_errors_total", "counter", "Failures to render or write a secret file (the last good file is kept).")
	series("sidekey_agent_errors_total", "secret", m.errors)
	family("sidekey_agent_fetch_errors_total", "counter", "Failed reads from a backend.")
	series("sidekey_agent_fetch_errors_total", "backend", m.fetchErrors)
	family("sidekey_agent_last_success_timestamp_seconds", "gauge", "Unix time of the last successful render of a secret.")
	series("sidekey_agent_last_success_timestamp_seconds", "secret", unixSeconds(m.lastSuccess))
	family("sidekey_agent_lease_ttl_seconds", "gauge", "Seconds left on the lease of a dynamic secret.")
	ttl := map[string]float64{}
	now := m.now()
	for k, v := range m.leaseExpiry {
		ttl[k] = max(0, v.Sub(now).Seconds())
	}
	series("sidekey_agent_lease_ttl_seconds", "secret", ttl)
	family("sidekey_agent_notify_errors_total", "counter", "Failed notifications of the app.")
	fmt.Fprintf(&b, "sidekey_agent_notify_errors_total %g\n", m.notifyErrors)
	family("sidekey_agent_ready", "gauge", "1 once every secret has been written.")
	r := 0
	if m.ready {
		r = 1
	}
	fmt.Fprintf(&b, "sidekey_agent_ready %d\n", r)
	_, err := io.WriteString(w, b.String())
	return err
}

func unixSeconds(ts map[string]time.Time) map[string]float64 {
	out := make(map[string]float64, len(ts))
	for k, v := range ts {
		out[k] = float64(v.UnixMilli()) / 1000
	}
	return out
}

// Handler serves /healthz (the process is alive), /readyz (200 only after the first complete
// render) and /metrics.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !m.Ready() {
			http.Error(w, "secrets not written yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_ = m.WriteText(w)
	})
	return mux
}

// Serve listens on addr, which must be a loopback address, and serves the handler until ctx
// ends. It returns once listening, with a channel that yields the server's final error.
func Serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (net.Addr, <-chan error, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("health address %q: %w", addr, err)
	}
	if !isLoopback(host) {
		return nil, nil, fmt.Errorf("health address %q: must be loopback (127.0.0.1, ::1 or localhost)", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on health address: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(l)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Debug("serving health and metrics", "addr", l.Addr().String())
	return l.Addr(), done, nil
}

// CheckReady asks the agent at addr whether it is ready; for the startup probe.
func CheckReady(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return fmt.Errorf("agent at %s: %w", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent at %s: not ready (%s)", addr, resp.Status)
	}
	return nil
}
