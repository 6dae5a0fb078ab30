package injector

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
)

// WatchCertFiles serves a certificate and key from files, reloading them when they change (as
// cert-manager rotates them). It runs until ctx ends.
func WatchCertFiles(ctx context.Context, certFile, keyFile string, log *slog.Logger) (*certwatcher.CertWatcher, error) {
	w, err := certwatcher.New(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load --tls-cert-file %s / --tls-key-file %s: %w", certFile, keyFile, err)
	}
	w.RegisterCallback(func(c tls.Certificate) {
		if c.Leaf != nil {
			log.Info("serving certificate reloaded", "notAfter", c.Leaf.NotAfter)
		}
	})
	go func() {
		if err := w.Start(ctx); err != nil {
			log.Error("watch certificate files", "err", err)
		}
	}()
	return w, nil
}

// Keys of the self-managed TLS Secret.
const (
	secretCABundle = "ca.crt" // every CA the API server should trust, newest first
	secretCAKey    = "ca.key" // the newest CA's key
	secretCert     = corev1.TLSCertKey
	secretKey      = corev1.TLSPrivateKeyKey
	// bundleSinceAnnotation records when ca.crt last changed: a serving certificate from a new
	// CA is only issued once the bundle has had time to reach the API server.
	bundleSinceAnnotation = prefix + "ca-bundle-since"
)

// SelfManagedTLS keeps a CA and serving certificate in a Secret and the caBundle of the
// MutatingWebhookConfiguration in step with it. Any number of replicas may run it: the Secret is
// the single source of truth (updates are optimistic, a loser re-reads), every replica serves the
// certificate stored there, and rotation overlaps: a new CA joins the bundle next to the old one,
// the serving certificate moves to it only after Propagation, and the old CA leaves the bundle
// when it expires. So whichever replica the API server reaches, it trusts the certificate.
type SelfManagedTLS struct {
	Client        kubernetes.Interface
	Namespace     string
	SecretName    string
	WebhookConfig string   // MutatingWebhookConfiguration whose caBundle is kept current; "" for none
	DNSNames      []string // of the serving certificate, e.g. the Service's names
	IPs           []net.IP
	CALifetime    time.Duration // default 5 years
	CertLifetime  time.Duration // default 90 days
	// Propagation is how long a new CA bundle must have been in place (and seen in the webhook
	// configuration) before a serving certificate signed by the new CA is issued. Default 1m.
	Propagation time.Duration
	Interval    time.Duration // reconcile period (also how soon a caBundle reset by a redeploy is restored), default 10s
	Log         *slog.Logger
	Now         func() time.Time // default time.Now

	current  atomic.Pointer[tls.Certificate]
	ready    atomic.Bool
	defaultd sync.Once
}

// ServiceDNSNames are the names a Service answers to inside the cluster.
func ServiceDNSNames(service, namespace string) []string {
	return []string{service, service + "." + namespace, service + "." + namespace + ".svc", service + "." + namespace + ".svc.cluster.local"}
}

func (m *SelfManagedTLS) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func (m *SelfManagedTLS) defaults() { m.defaultd.Do(m.setDefaults) }

func (m *SelfManagedTLS) setDefaults() {
	if m.CALifetime <= 0 {
		m.CALifetime = 5 * 365 * 24 * time.Hour
	}
	if m.CertLifetime <= 0 {
		m.CertLifetime = 90 * 24 * time.Hour
	}
	if m.CertLifetime > m.CALifetime {
		m.CertLifetime = m.CALifetime
	}
	if m.Propagation <= 0 {
		m.Propagation = time.Minute
	}
	if m.Interval <= 0 {
		m.Interval = 10 * time.Second
	}
	if m.Log == nil {
		m.Log = slog.New(slog.DiscardHandler)
	}
}

// GetCertificate serves the certificate last read from the Secret (for tls.Config).
func (m *SelfManagedTLS) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c := m.current.Load()
	if c == nil {
		return nil, errors.New("no serving certificate yet")
	}
	return c, nil
}

// Ready reports whether a certificate is loaded and the webhook configuration trusts its CA.
func (m *SelfManagedTLS) Ready() error {
	if !m.ready.Load() {
		return errors.New("self-managed TLS: certificate not in place yet")
	}
	return nil
}

// Run reconciles until ctx ends. The first pass runs before Run returns to its caller's
// goroutine only through Reconcile; Run itself retries failures every Interval.
func (m *SelfManagedTLS) Run(ctx context.Context) {
	m.defaults()
	t := time.NewTicker(m.Interval)
	defer t.Stop()
	for {
		if err := m.Reconcile(ctx); err != nil && ctx.Err() == nil {
			m.Log.Error("reconcile webhook TLS", "secret", m.Namespace+"/"+m.SecretName, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Reconcile makes one pass: read (or create) the Secret, rotate what is due, publish the CA
// bundle to the webhook configuration, and serve the stored certificate.
func (m *SelfManagedTLS) Reconcile(ctx context.Context) error {
	m.defaults()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error { return m.reconcile(ctx) })
}

func (m *SelfManagedTLS) reconcile(ctx context.Context) error {
	secrets := m.Client.CoreV1().Secrets(m.Namespace)
	sec, err := secrets.Get(ctx, m.SecretName, metav1.GetOptions{})
	create := apierrors.IsNotFound(err)
	if err != nil && !create {
		return fmt.Errorf("get secret %s/%s: %w", m.Namespace, m.SecretName, err)
	}
	if create {
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: m.SecretName, Namespace: m.Namespace,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "sidekey"}}, Type: corev1.SecretTypeTLS}
	}
	st, perr := parseTLSState(sec)
	if perr != nil && !create {
		m.Log.Warn("webhook TLS secret unusable; replacing it", "secret", m.Namespace+"/"+m.SecretName, "err", perr)
	}
	published, err := m.published(ctx, st)
	if err != nil {
		return err
	}
	changed, err := m.next(st, m.now(), published)
	if err != nil {
		return err
	}
	if changed {
		st.store(sec)
		if create {
			sec, err = secrets.Create(ctx, sec, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("secrets"), m.SecretName, err) // another replica won; re-read
			}
		} else {
			sec, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
		}
		if err != nil {
			return fmt.Errorf("store secret %s/%s: %w", m.Namespace, m.SecretName, err)
		}
		m.Log.Info("webhook TLS updated", "secret", m.Namespace+"/"+m.SecretName, "cas", len(st.cas), "certNotAfter", st.leaf.NotAfter)
		if st, err = parseTLSState(sec); err != nil {
			return fmt.Errorf("read back secret %s/%s: %w", m.Namespace, m.SecretName, err)
		}
	}
	if err := m.publish(ctx, st.bundle()); err != nil {
		return err
	}
	cert, err := tls.X509KeyPair(st.leafPEM, st.leafKeyPEM)
	if err != nil {
		return fmt.Errorf("serving certificate in secret %s/%s: %w", m.Namespace, m.SecretName, err)
	}
	cert.Leaf = st.leaf
	m.current.Store(&cert)
	m.ready.Store(true)
	return nil
}

// published reports whether the webhook configuration trusts st's newest CA.
func (m *SelfManagedTLS) published(ctx context.Context, st *tlsState) (bool, error) {
	if len(st.cas) == 0 {
		return false, nil
	}
	if m.WebhookConfig == "" {
		return true, nil
	}
	cfg, err := m.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, m.WebhookConfig, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("get MutatingWebhookConfiguration %s: %w", m.WebhookConfig, err)
	}
	newest := pemCert(st.cas[0].Raw)
	for _, w := range cfg.Webhooks {
		if !bytes.Contains(w.ClientConfig.CABundle, newest) {
			return false, nil
		}
	}
	return len(cfg.Webhooks) > 0, nil
}

// publish sets the caBundle of every webhook of the configuration.
func (m *SelfManagedTLS) publish(ctx context.Context, bundle []byte) error {
	if m.WebhookConfig == "" {
		return nil
	}
	api := m.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cfg, err := api.Get(ctx, m.WebhookConfig, metav1.GetOptions{})
		if err != nil {
			return err
		}
		changed := false
		for i := range cfg.Webhooks {
			if !bytes.Equal(cfg.Webhooks[i].ClientConfig.CABundle, bundle) {
				cfg.Webhooks[i].ClientConfig.CABundle = bundle
				changed = true
			}
		}
		if !changed {
			return nil
		}
		_, err = api.Update(ctx, cfg, metav1.UpdateOptions{})
		if err == nil {
			m.Log.Info("caBundle published", "webhookConfiguration", m.WebhookConfig)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("update caBundle of MutatingWebhookConfiguration %s: %w", m.WebhookConfig, err)
	}
	return nil
}

// tlsState is the content of the Secret, parsed.
type tlsState struct {
	cas                 []*x509.Certificate // newest first
	keys                []crypto.Signer     // keys[i] signs cas[i]
	leaf                *x509.Certificate
	leafPEM, leafKeyPEM []byte
	since               time.Time // when the bundle last changed
}

func parseTLSState(sec *corev1.Secret) (*tlsState, error) {
	if len(sec.Data) == 0 {
		return &tlsState{}, errors.New("empty")
	}
	st := &tlsState{}
	for rest := sec.Data[secretCABundle]; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return &tlsState{}, fmt.Errorf("%s: %w", secretCABundle, err)
		}
		st.cas = append(st.cas, c)
	}
	for rest := sec.Data[secretCAKey]; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		k, err := parseKey(b.Bytes)
		if err != nil {
			return &tlsState{}, fmt.Errorf("%s: %w", secretCAKey, err)
		}
		st.keys = append(st.keys, k)
	}
	if len(st.cas) == 0 || len(st.keys) != len(st.cas) {
		return &tlsState{}, fmt.Errorf("%s/%s: %d CAs and %d keys", secretCABundle, secretCAKey, len(st.cas), len(st.keys))
	}
	st.since, _ = time.Parse(time.RFC3339, sec.Annotations[bundleSinceAnnotation])
	st.leafPEM, st.leafKeyPEM = sec.Data[secretCert], sec.Data[secretKey]
	pair, err := tls.X509KeyPair(st.leafPEM, st.leafKeyPEM)
	if err == nil {
		st.leaf, err = x509.ParseCertificate(pair.Certificate[0])
	}
	if err != nil {
		st.leaf, st.leafPEM, st.leafKeyPEM = nil, nil, nil
		return st, fmt.Errorf("%s: %w", secretCert, err)
	}
	return st, nil
}

func (st *tlsState) bundle() []byte {
	var out []byte
	for _, c := range st.cas {
		out = append(out, pemCert(c.Raw)...)
	}
	return out
}

func (st *tlsState) store(sec *corev1.Secret) {
	var keys []byte
	for _, k := range st.keys {
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		keys = append(keys, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...)
	}
	sec.Data = map[string][]byte{
		secretCABundle: st.bundle(),
		secretCAKey:    keys,
		secretCert:     st.leafPEM,
		secretKey:      st.leafKeyPEM,
	}
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Annotations[bundleSinceAnnotation] = st.since.UTC().Format(time.RFC3339Nano)
}

func (st *tlsState) addCA(now time.Time, life time.Duration) error {
	ca, key, err := newCA(now, life)
	if err != nil {
		return err
	}
	st.cas = append([]*x509.Certificate{ca}, st.cas...)
	st.keys = append([]crypto.Signer{key}, st.keys...)
	st.since = now
	return nil
}

// next advances st to now: create what is missing, rotate what is due. It reports whether st
// changed. published says whether the webhook configuration already trusts st.cas[0].
//
// Timeline of one rotation: a CA with a third of its life left gets a successor, which joins
// the bundle in front of it; once the bundle has been published for Propagation, the serving
// certificate moves to the successor; the old CA leaves the bundle when it expires. A serving
// certificate is renewed well before it expires (a third of its life, and never less than
// Propagation plus three Intervals, so every replica has re-read it in time), from the newest
// CA every API server already trusts.
func (m *SelfManagedTLS) next(st *tlsState, now time.Time, published bool) (bool, error) {
	changed := false
	if len(st.cas) == 0 || !now.Before(st.cas[0].NotAfter) {
		if err := st.addCA(now, m.CALifetime); err != nil {
			return false, err
		}
		changed = true
	}
	// Old CAs leave the bundle once expired; the newest always stays.
	for i := len(st.cas) - 1; i > 0; i-- {
		if !now.Before(st.cas[i].NotAfter) {
			st.cas = slices.Delete(st.cas, i, i+1)
			st.keys = slices.Delete(st.keys, i, i+1)
			st.since, changed = now, true
		}
	}
	if due(st.cas[0], now, 0) {
		if err := st.addCA(now, m.CALifetime); err != nil {
			return false, err
		}
		changed, published = true, false
	}
	settled := published && now.Sub(st.since) >= m.Propagation
	// The CA to sign with: the newest once settled, else the one before it while it lasts.
	signer := 0
	if !settled && len(st.cas) > 1 && st.cas[1].NotAfter.Sub(now) > m.Propagation+3*m.Interval {
		signer = 1
	}
	leafOK := st.leaf != nil && now.Before(st.leaf.NotAfter) && st.trusts(st.leaf)
	switch {
	case !leafOK:
		// nothing valid to serve
	case settled && st.leaf.CheckSignatureFrom(st.cas[0]) != nil:
		// move to the newest CA once every API server can trust it
	case due(st.leaf, now, m.Propagation+3*m.Interval):
	case !slices.Equal(st.leaf.DNSNames, m.DNSNames) || !sameIPs(st.leaf.IPAddresses, m.IPs):
	default:
		return changed, nil
	}
	certPEM, keyPEM, leaf, err := newLeaf(st.cas[signer], st.keys[signer], now, m.CertLifetime, m.DNSNames, m.IPs)
	if err != nil {
		return false, err
	}
	st.leaf, st.leafPEM, st.leafKeyPEM = leaf, certPEM, keyPEM
	return true, nil
}

func (st *tlsState) trusts(c *x509.Certificate) bool {
	for _, ca := range st.cas {
		if c.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}

// due reports whether c has less than a third of its life, or less than margin, left.
func due(c *x509.Certificate, now time.Time, margin time.Duration) bool {
	left := c.NotAfter.Sub(now)
	return left < c.NotAfter.Sub(c.NotBefore)/3 || left < margin
}

func sameIPs(a, b []net.IP) bool {
	return slices.EqualFunc(a, b, func(x, y net.IP) bool { return x.Equal(y) })
}

// backdate keeps certificates valid on API servers whose clock is slightly behind.
func backdate(life time.Duration) time.Duration { return min(time.Minute, life/10) }

func newCA(now time.Time, life time.Duration) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "sidekey-webhook-ca@" + now.UTC().Format(time.RFC3339)},
		NotBefore:             now.Add(-backdate(life)),
		NotAfter:              now.Add(life),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	return ca, key, err
}

func newLeaf(ca *x509.Certificate, caKey crypto.Signer, now time.Time, life time.Duration, dns []string, ips []net.IP) (certPEM, keyPEM []byte, leaf *x509.Certificate, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generate serving key: %w", err)
	}
	notAfter := now.Add(life)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	cn := "sidekey-webhook"
	if len(dns) > 0 {
		cn = dns[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-backdate(life)),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("create serving certificate: %w", err)
	}
	leaf, err = x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pemCert(der), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), leaf, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func parseKey(der []byte) (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
	}
	return s, nil
}
