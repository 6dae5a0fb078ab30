package injector

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestSelfManagedTLSTimeline steps the rotation logic through three CA lifetimes, as replicas
// reconciling every Interval would, and checks at every step what the API server relies on.
func TestSelfManagedTLSTimeline(t *testing.T) {
	tests := []struct {
		name                             string
		caLife, certLife, prop, interval time.Duration
		wantMinCAs, wantMinLeaves        int
	}{
		{"defaults", 5 * 365 * 24 * time.Hour, 90 * 24 * time.Hour, time.Minute, time.Minute, 3, 15},
		{"short", 9 * time.Second, 4 * time.Second, time.Second, 150 * time.Millisecond, 3, 10},
		{"cert as long as CA", time.Hour, time.Hour, time.Minute, 10 * time.Second, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &SelfManagedTLS{CALifetime: tt.caLife, CertLifetime: tt.certLife, Propagation: tt.prop, Interval: tt.interval,
				DNSNames: []string{"sidekey-webhook.sidekey.svc"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
			m.defaults()
			start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			st := &tlsState{}
			var (
				published   []*x509.Certificate // the bundle the API server has
				publishedAt = map[string]time.Time{}
				served      *x509.Certificate // what a lagging replica still serves
				cas, leaves = map[string]bool{}, map[string]bool{}
			)
			// Coarser steps for long lifetimes keep the test fast; the invariants still hold per step.
			step := tt.interval
			if n := tt.caLife * 3 / step; n > 2000 {
				step = tt.caLife * 3 / 2000
			}
			for now := start; now.Before(start.Add(3 * tt.caLife)); now = now.Add(step) {
				isPublished := len(published) > 0 && len(st.cas) > 0 && published[0].Equal(st.cas[0])
				if _, err := m.next(st, now, isPublished); err != nil {
					t.Fatal(err)
				}
				// The lagging replica's certificate must still be trusted by the new bundle.
				if served != nil && now.Before(served.NotAfter) && !st.trusts(served) {
					t.Fatalf("%s: the bundle dropped the CA of a certificate a replica may still serve", now.Sub(start))
				}
				// The serving certificate is valid now and for the next interval (replica lag) ...
				if !now.Add(tt.interval).Before(st.leaf.NotAfter) {
					t.Fatalf("%s: serving certificate expires at %s, within one interval", now.Sub(start), st.leaf.NotAfter.Sub(start))
				}
				// ... and signed by a CA the API server has trusted for Propagation (but the first).
				issuer := ""
				for _, c := range st.cas {
					if st.leaf.CheckSignatureFrom(c) == nil {
						issuer = c.SerialNumber.String()
					}
				}
				if at, ok := publishedAt[issuer]; (!ok || now.Sub(at) < tt.prop) && len(cas) > 1 && !leaves[st.leaf.SerialNumber.String()] {
					t.Fatalf("%s: new certificate signed by a CA published %v ago; want at least %s", now.Sub(start), now.Sub(at), tt.prop)
				}
				leaves[st.leaf.SerialNumber.String()] = true
				for _, c := range st.cas {
					cas[c.SerialNumber.String()] = true
				}
				// Publish, as reconcile does after storing the Secret.
				published = st.cas
				for _, c := range st.cas {
					if _, ok := publishedAt[c.SerialNumber.String()]; !ok {
						publishedAt[c.SerialNumber.String()] = now
					}
				}
				served = st.leaf
				if len(st.cas) > 2 {
					t.Fatalf("%s: %d CAs in the bundle; want at most 2", now.Sub(start), len(st.cas))
				}
			}
			if len(cas) < tt.wantMinCAs || len(leaves) < tt.wantMinLeaves {
				t.Errorf("%d CAs and %d certificates over three CA lifetimes; want >= %d and >= %d", len(cas), len(leaves), tt.wantMinCAs, tt.wantMinLeaves)
			}
		})
	}
}

func TestTLSStateRoundTrip(t *testing.T) {
	m := &SelfManagedTLS{DNSNames: ServiceDNSNames("sidekey-webhook", "sidekey")}
	m.defaults()
	now := time.Now()
	st := &tlsState{}
	if changed, err := m.next(st, now, false); err != nil || !changed {
		t.Fatalf("next on empty state = %v, %v", changed, err)
	}
	// Rotate the CA so two CAs and two keys are stored.
	if _, err := m.next(st, now.Add(m.CALifetime*3/4), true); err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{}
	st.store(sec)
	got, err := parseTLSState(sec)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.cas) != 2 || len(got.keys) != 2 || !got.leaf.Equal(st.leaf) || !got.since.Equal(st.since) {
		t.Errorf("round trip: %d CAs, %d keys, same leaf %v, since %v vs %v", len(got.cas), len(got.keys), got.leaf.Equal(st.leaf), got.since, st.since)
	}
	if _, err := parseTLSState(&corev1.Secret{Data: map[string][]byte{secretCABundle: []byte("junk")}}); err == nil {
		t.Errorf("parseTLSState accepted junk")
	}
	if m.Ready() == nil {
		t.Errorf("Ready before any reconcile")
	}
}

// TestWatchCertFiles serves a certificate from files and picks up a replacement (as
// cert-manager writes one) without a restart.
func TestWatchCertFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	now := time.Now()
	write := func() *x509.Certificate {
		ca, key, err := newCA(now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		certPEM, keyPEM, leaf, err := newLeaf(ca, key, now, time.Hour, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		// Write beside and rename, as the kubelet updates a mounted Secret.
		for name, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
			if err := os.WriteFile(name+".tmp", b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(name+".tmp", name); err != nil {
				t.Fatal(err)
			}
		}
		return leaf
	}
	first := write()
	w, err := WatchCertFiles(t.Context(), certFile, keyFile, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	served := func() *x509.Certificate {
		c, err := w.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf
	}
	if !served().Equal(first) {
		t.Fatal("not serving the certificate from the files")
	}
	second := write()
	deadline := time.Now().Add(20 * time.Second)
	for !served().Equal(second) {
		if time.Now().After(deadline) {
			t.Fatal("replaced certificate files were not reloaded")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := WatchCertFiles(t.Context(), filepath.Join(dir, "missing.crt"), keyFile, testLogger(t)); err == nil || !strings.Contains(err.Error(), "--tls-cert-file") {
		t.Errorf("missing file: err = %v; want one naming --tls-cert-file", err)
	}
}
