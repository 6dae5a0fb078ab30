package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Backoff is an exponential backoff with full jitter: attempt n waits a random time in
// [Base*2^(n-1)/2, Base*2^(n-1)], at most Max.
type Backoff struct {
	Base time.Duration
	Max  time.Duration
}

// DefaultBackoff starts at a second and stops growing at two minutes.
var DefaultBackoff = Backoff{Base: time.Second, Max: 2 * time.Minute}

// Delay is how long to wait before attempt n+1 after n failures (n ≥ 1).
func (b Backoff) Delay(n int) time.Duration {
	d := b.Base
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return jitter(d, 0.5)
}

// jitter returns d shortened by a random fraction of at most frac.
func jitter(d time.Duration, frac float64) time.Duration {
	if d <= 0 {
		return d
	}
	return d - time.Duration(rand.Float64()*frac*float64(d))
}

// Once renders every secret, retrying what failed with backoff, until all are written or
// timeout passes. Its error names every secret still failing and why (never a value).
func (a *Agent) Once(parent context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	for {
		err := a.Sync(ctx)
		if err == nil || a.Ready() { // every file written, if need be from a value read earlier in this run
			return nil
		}
		wait := time.Until(a.NextDue())
		a.log.Warn("not every secret is written yet; retrying", "retry_in", wait.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return fmt.Errorf("stopped before every secret was written: %w", err)
			}
			return fmt.Errorf("gave up after %s: %w", timeout, err)
		case <-time.After(max(wait, 10*time.Millisecond)):
		}
	}
}

// Run renders every secret, then keeps them fresh until ctx ends: each document is read again
// at the refresh interval (or when its lease is due for renewal), with backoff after failures.
// It returns nil when ctx ends; on the way out it lets backends release leases.
func (a *Agent) Run(ctx context.Context) error {
	for {
		if err := a.Sync(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("refresh incomplete; last good files kept", "err", err)
		}
		wait := max(time.Until(a.NextDue()), 10*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return a.close()
		case <-t.C:
		}
	}
}

func (a *Agent) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	for name, b := range a.backends {
		if c, ok := b.(Closer); ok {
			if err := c.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("close %s backend: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// jsonMarshal encodes without HTML escaping, so secrets with <, > or & stay as they are.
func jsonMarshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
