// Package vault is sidekey-agent's HashiCorp Vault backend: Kubernetes or token login, token
// renewal, KV v1/v2 reads (the engine version detected the way the Vault CLI does) and dynamic
// secrets whose leases are renewed at about two thirds of their TTL and fetched anew when they
// can no longer be renewed.
package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	vapi "github.com/hashicorp/vault/api"

	"github.com/sidekey/sidekey/injector/agent"
	"github.com/sidekey/sidekey/injector/spec"
)

// DefaultTokenPath is the service-account token the kubelet projects into every container.
const DefaultTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// DefaultAuthPath is the mount of the Kubernetes auth method.
const DefaultAuthPath = "auth/kubernetes"

// ErrLogin is wrapped by every login failure.
var ErrLogin = errors.New("vault login failed")

// Backend reads secrets from one Vault server. It is safe for one goroutine at a time (the
// agent's loop).
type Backend struct {
	cfg    spec.Vault
	client *vapi.Client
	log    *slog.Logger
	now    func() time.Time
	token  string // from VAULT_TOKEN, for token auth

	tokenDue   time.Time // when to renew or replace the token; zero: never
	tokenTTL   time.Duration
	renewable  bool
	loggedIn   bool
	mounts     map[string]mount // by source path
	leases     map[spec.Source]*lease
	leaseMu    sync.Mutex
	generation int // bumped on every new login; leases of older tokens are dead
}

type mount struct {
	path    string
	version int
}

type lease struct {
	id         string
	ttl        time.Duration // as last granted
	renewable  bool
	obtained   time.Time // when ttl was granted
	due        time.Time // when to renew (or refetch)
	refetch    bool      // due means fetch anew rather than renew
	doc        agent.Document
	generation int
}

// Options tune a Backend.
type Options struct {
	Logger *slog.Logger
	// Token is used when the spec names no Kubernetes role (local use); usually VAULT_TOKEN.
	Token string
	Now   func() time.Time
	// Timeout bounds each HTTP request; zero means 10s.
	Timeout time.Duration
}

// New returns a Backend for the spec's Vault settings. It does not contact Vault.
func New(cfg spec.Vault, o Options) (*Backend, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if cfg.Role == "" && o.Token == "" {
		return nil, errors.New("vault: the spec names no kubernetes role and VAULT_TOKEN is not set; set vault.role (or VAULT_TOKEN for local use)")
	}
	if cfg.AuthPath == "" {
		cfg.AuthPath = DefaultAuthPath
	}
	if cfg.TokenPath == "" {
		cfg.TokenPath = DefaultTokenPath
	}
	vc := vapi.DefaultConfig()
	if vc.Error != nil {
		return nil, fmt.Errorf("vault client config: %w", vc.Error)
	}
	if cfg.Addr != "" {
		vc.Address = cfg.Addr
	}
	vc.Timeout = o.Timeout
	vc.MaxRetries = 0 // the agent retries with its own backoff
	if cfg.CACertPath != "" {
		if err := vc.ConfigureTLS(&vapi.TLSConfig{CACert: cfg.CACertPath}); err != nil {
			return nil, fmt.Errorf("vault CA %s: %w", cfg.CACertPath, err)
		}
	}
	c, err := vapi.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	c.ClearToken()
	if cfg.Namespace != "" {
		c.SetNamespace(cfg.Namespace)
	}
	return &Backend{
		cfg: cfg, client: c, log: o.Logger.With("backend", "vault"), now: o.Now, token: o.Token,
		mounts: map[string]mount{}, leases: map[spec.Source]*lease{},
	}, nil
}

// Fetch implements agent.Backend.
func (b *Backend) Fetch(ctx context.Context, srcs []spec.Source) []agent.Result {
	out := make([]agent.Result, len(srcs))
	if err := b.ensureToken(ctx); err != nil {
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	for i, src := range srcs {
		doc, err := b.fetch(ctx, src)
		if isPermissionDenied(err) && b.cfg.Role != "" {
			// The token may have been revoked or Vault restarted with fresh state: log in again once.
			b.log.Info("permission denied; logging in again", "source", src.String())
			b.loggedIn = false
			if lerr := b.ensureToken(ctx); lerr != nil {
				out[i].Err = lerr
				continue
			}
			doc, err = b.fetch(ctx, src)
		}
		out[i] = agent.Result{Doc: doc, Err: err}
	}
	return out
}

// ensureToken logs in when there is no token and renews (or replaces) it when due.
func (b *Backend) ensureToken(ctx context.Context) error {
	now := b.now()
	if b.loggedIn && (b.tokenDue.IsZero() || now.Before(b.tokenDue)) {
		return nil
	}
	if b.loggedIn && b.renewable {
		s, err := b.client.Auth().Token().RenewSelfWithContext(ctx, int(b.tokenTTL.Seconds()))
		if err == nil && s != nil && s.Auth != nil {
			ttl := time.Duration(s.Auth.LeaseDuration) * time.Second
			if ttl >= b.tokenTTL/2 || b.cfg.Role == "" {
				b.setToken(s.Auth.ClientToken, ttl, s.Auth.Renewable)
				b.log.Debug("renewed vault token", "ttl", ttl)
				return nil
			}
			b.log.Info("vault token near its max TTL; logging in again", "ttl", ttl)
		} else if err != nil {
			b.log.Warn("renew vault token failed; logging in again", "err", describe(err))
		}
	}
	return b.login(ctx)
}

func (b *Backend) login(ctx context.Context) error {
	if b.cfg.Role == "" {
		b.client.SetToken(b.token)
		s, err := b.client.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			return fmt.Errorf("%w: look up VAULT_TOKEN: %w", ErrLogin, describe(err))
		}
		ttl, _ := s.TokenTTL()
		renewable, _ := s.TokenIsRenewable()
		b.setToken(b.token, ttl, renewable)
		b.loggedIn = true
		return nil
	}
	jwt, err := os.ReadFile(b.cfg.TokenPath)
	if err != nil {
		return fmt.Errorf("%w: read the service account token for kubernetes auth: %w", ErrLogin, err)
	}
	b.client.ClearToken()
	path := strings.Trim(b.cfg.AuthPath, "/") + "/login"
	s, err := b.client.Logical().WriteWithContext(ctx, path, map[string]any{
		"role": b.cfg.Role, "jwt": strings.TrimSpace(string(jwt)),
	})
	if err != nil {
		return fmt.Errorf("%w: kubernetes auth at %s with role %q (check the role exists and is bound to this pod's service account and namespace, and that the token audience matches the role's): %w", ErrLogin, b.cfg.AuthPath, b.cfg.Role, describe(err))
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return fmt.Errorf("%w: kubernetes auth at %s with role %q: no token in the answer", ErrLogin, b.cfg.AuthPath, b.cfg.Role)
	}
	b.setToken(s.Auth.ClientToken, time.Duration(s.Auth.LeaseDuration)*time.Second, s.Auth.Renewable)
	b.loggedIn = true
	b.generation++
	b.log.Info("logged in to vault", "method", "kubernetes", "role", b.cfg.Role, "ttl", b.tokenTTL, "renewable", b.renewable)
	return nil
}

func (b *Backend) setToken(tok string, ttl time.Duration, renewable bool) {
	b.client.SetToken(tok)
	b.tokenTTL, b.renewable = ttl, renewable
	b.tokenDue = time.Time{}
	if ttl > 0 {
		b.tokenDue = b.now().Add(renewAt(ttl))
	}
}

// renewAt is about two thirds of ttl, less up to a tenth of it at random, so that many pods
// do not renew in step.
func renewAt(ttl time.Duration) time.Duration {
	d := ttl * 2 / 3
	return d - time.Duration(rand.Float64()*0.1*float64(ttl))
}

// fetch returns one document: from the lease cache while a lease is good, renewing it when
// due, or by reading Vault.
func (b *Backend) fetch(ctx context.Context, src spec.Source) (agent.Document, error) {
	now := b.now()
	b.leaseMu.Lock()
	l := b.leases[src]
	b.leaseMu.Unlock()
	if l != nil && l.generation == b.generation {
		if now.Before(l.due) {
			return b.leaseDoc(l), nil
		}
		if !l.refetch && l.renewable {
			if err := b.renew(ctx, src, l); err == nil {
				return b.leaseDoc(l), nil
			} else {
				b.log.Warn("lease renewal failed; fetching the secret anew", "source", src.String(), "err", err)
			}
		}
	}
	return b.read(ctx, src)
}

func (b *Backend) leaseDoc(l *lease) agent.Document {
	d := l.doc
	d.Refetch = l.due
	if !b.tokenDue.IsZero() && b.tokenDue.Before(d.Refetch) {
		d.Refetch = b.tokenDue // keep the token (the leases' parent) alive
	}
	d.LeaseExpiry = l.obtained.Add(l.ttl)
	return d
}

func (b *Backend) renew(ctx context.Context, src spec.Source, l *lease) error {
	s, err := b.client.Sys().RenewWithContext(ctx, l.id, int(l.ttl.Seconds()))
	if err != nil {
		return fmt.Errorf("renew lease of %s: %w", src, describe(err))
	}
	if s == nil {
		return fmt.Errorf("renew lease of %s: empty answer", src)
	}
	ttl := time.Duration(s.LeaseDuration) * time.Second
	now := b.now()
	if ttl < l.ttl {
		// Capped by the lease's max TTL: use what is left, then fetch anew.
		l.refetch = true
	}
	l.obtained, l.renewable, l.ttl = now, s.Renewable, ttl
	if !s.Renewable {
		l.refetch = true
	}
	l.due = now.Add(renewAt(ttl))
	b.log.Info("renewed lease", "source", src.String(), "ttl", ttl, "fetch_anew_next", l.refetch)
	return nil
}

// read reads src from Vault: a KV path rewritten for its engine version, or any other path;
// "path?k=v&..." writes k=v to path instead (e.g. pki/issue/<role>?common_name=app.example).
func (b *Backend) read(ctx context.Context, src spec.Source) (agent.Document, error) {
	p, query, hasQuery := strings.Cut(src.Path, "?")
	var (
		s   *vapi.Secret
		err error
		kv2 bool
	)
	if hasQuery {
		params, perr := url.ParseQuery(query)
		if perr != nil {
			return agent.Document{}, fmt.Errorf("%s: parameters after ?: %w", src, perr)
		}
		data := map[string]any{}
		for k, v := range params {
			data[k] = strings.Join(v, ",")
		}
		s, err = b.client.Logical().WriteWithContext(ctx, p, data)
	} else {
		m, merr := b.mountOf(ctx, p)
		if merr != nil {
			return agent.Document{}, fmt.Errorf("%s: %w", src, merr)
		}
		if m.version == 2 {
			kv2 = true
			p = kvDataPath(p, m.path)
		}
		s, err = b.client.Logical().ReadWithContext(ctx, p)
	}
	if err != nil {
		return agent.Document{}, fmt.Errorf("read %s: %w", src, describe(err))
	}
	if s == nil {
		return agent.Document{}, fmt.Errorf("read %s: no secret at %s (check the path; KV v2 paths may be written with or without data/)", src, p)
	}
	data := s.Data
	if kv2 {
		d, ok := s.Data["data"].(map[string]any)
		if !ok || d == nil {
			return agent.Document{}, fmt.Errorf("read %s: the current version is deleted or destroyed", src)
		}
		data = d
	}
	if data == nil {
		data = map[string]any{}
	}
	doc := agent.Document{Data: data}
	if s.LeaseID == "" {
		return doc, nil
	}
	now := b.now()
	ttl := time.Duration(s.LeaseDuration) * time.Second
	l := &lease{
		id: s.LeaseID, ttl: ttl, renewable: s.Renewable, obtained: now,
		due: now.Add(renewAt(ttl)), refetch: !s.Renewable, doc: doc, generation: b.generation,
	}
	b.leaseMu.Lock()
	b.leases[src] = l
	b.leaseMu.Unlock()
	b.log.Info("obtained lease", "source", src.String(), "ttl", ttl, "renewable", s.Renewable)
	return b.leaseDoc(l), nil
}

// Close revokes the leases the agent holds when the spec asks for it.
func (b *Backend) Close(ctx context.Context) error {
	if !b.cfg.RevokeOnShutdown {
		return nil
	}
	b.leaseMu.Lock()
	defer b.leaseMu.Unlock()
	var errs []error
	for src, l := range b.leases {
		if err := b.client.Sys().RevokeWithContext(ctx, l.id); err != nil {
			errs = append(errs, fmt.Errorf("revoke lease of %s: %w", src, describe(err)))
			continue
		}
		b.log.Info("revoked lease", "source", src.String())
		delete(b.leases, src)
	}
	return errors.Join(errs...)
}

// describe turns a Vault API error into one without the request URL's host details or a raw
// body, keeping Vault's own messages (which name paths and reasons, never secret values).
func describe(err error) error {
	var re *vapi.ResponseError
	if errors.As(err, &re) {
		msg := strings.Join(re.Errors, "; ")
		if re.RawError {
			msg = "unparsable error body (withheld)"
		}
		if msg == "" {
			msg = http.StatusText(re.StatusCode)
		}
		return &Error{Status: re.StatusCode, Msg: msg}
	}
	return err
}

// Error is a Vault error answer.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return fmt.Sprintf("vault answered %d: %s", e.Status, e.Msg) }

func isPermissionDenied(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusForbidden
}
