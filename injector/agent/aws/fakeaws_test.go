package aws

// No real AWS service exists on the machines these tests run on (no network, no emulator). So
// this file is an HTTP server that speaks the services' real wire protocols to the real SDK:
// JSON 1.1 with X-Amz-Target for Secrets Manager and SSM, the query protocol with an XML answer
// for STS AssumeRoleWithWebIdentity. It verifies the SigV4 signature of every signed request,
// computed here independently of the SDK's signer, and verifies web-identity tokens against
// the real kube-apiserver's OIDC discovery document and JWKS, so IRSA is real up to AWS itself.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

type smVersion struct {
	id     string
	value  string
	stages []string
}

type smSecret struct {
	name, arn string
	versions  []*smVersion
}

type fakeAWS struct {
	t      testing.TB
	region string
	// oidc verifies web-identity tokens; nil refuses every token.
	oidc       *oidcVerifier
	roleARN    string
	wantSub    string // the service account a role trusts: system:serviceaccount:<ns>:<name>
	wantAud    string
	mu         sync.Mutex
	creds      map[string]issued // by access key id
	secrets    []*smSecret
	params     map[string]string // SSM name -> value
	calls      map[string]int    // by operation
	lastErrors []string
}

type issued struct{ secret, session string }

func newFakeAWS(t testing.TB, region string) *fakeAWS {
	return &fakeAWS{t: t, region: region, creds: map[string]issued{}, params: map[string]string{}, calls: map[string]int{}, wantAud: "sts.amazonaws.com"}
}

// staticCreds registers long-lived credentials (no session token).
func (f *fakeAWS) staticCreds(akid, secret string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creds[akid] = issued{secret: secret}
}

func (f *fakeAWS) putSecret(name, value string, stages ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(stages) == 0 {
		stages = []string{"AWSCURRENT"}
	}
	var s *smSecret
	for _, x := range f.secrets {
		if x.name == name {
			s = x
		}
	}
	if s == nil {
		s = &smSecret{name: name, arn: fmt.Sprintf("arn:aws:secretsmanager:%s:111122223333:secret:%s-AbCdEf", f.region, name)}
		f.secrets = append(f.secrets, s)
	}
	for _, st := range stages {
		for _, v := range s.versions { // a stage moves to the new version; AWSCURRENT's old holder becomes AWSPREVIOUS
			for i, old := range v.stages {
				if old == st {
					v.stages = append(v.stages[:i], v.stages[i+1:]...)
					if st == "AWSCURRENT" {
						v.stages = append(v.stages, "AWSPREVIOUS")
					}
					break
				}
			}
		}
	}
	s.versions = append(s.versions, &smVersion{id: randHex(16), value: value, stages: stages})
}

func (f *fakeAWS) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func (f *fakeAWS) resetCounts() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = map[string]int{}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (f *fakeAWS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	target := r.Header.Get("X-Amz-Target")
	if target == "" {
		f.serveSTS(w, r, body)
		return
	}
	service := "secretsmanager"
	if strings.HasPrefix(target, "AmazonSSM.") {
		service = "ssm"
	}
	if err := f.verifySigV4(r, body, service); err != nil {
		f.mu.Lock()
		f.calls["rejected"]++
		f.lastErrors = append(f.lastErrors, err.Error())
		f.mu.Unlock()
		jsonError(w, http.StatusForbidden, "SignatureDoesNotMatch", err.Error())
		return
	}
	_, op, _ := strings.Cut(target, ".")
	f.mu.Lock()
	f.calls[op]++
	f.mu.Unlock()
	var in map[string]any
	if err := json.Unmarshal(body, &in); err != nil {
		jsonError(w, 400, "SerializationException", "body is not JSON")
		return
	}
	switch target {
	case "secretsmanager.GetSecretValue":
		f.getSecretValue(w, in)
	case "secretsmanager.DescribeSecret":
		f.describeSecret(w, in)
	case "secretsmanager.BatchGetSecretValue":
		f.batchGetSecretValue(w, in)
	case "AmazonSSM.GetParameters":
		f.getParameters(w, in)
	default:
		jsonError(w, 400, "UnknownOperationException", target)
	}
}

func jsonError(w http.ResponseWriter, code int, typ, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", typ)
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"__type": typ, "message": msg})
}

func jsonOK(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(v)
}

func (f *fakeAWS) find(id string) *smSecret {
	for _, s := range f.secrets {
		if id == s.name || id == s.arn {
			return s
		}
	}
	return nil
}

// secret finds the request's SecretId, or answers ResourceNotFoundException and returns nil.
func (f *fakeAWS) secret(w http.ResponseWriter, in map[string]any) *smSecret {
	id, _ := in["SecretId"].(string)
	s := f.find(id)
	if s == nil {
		jsonError(w, 400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
	}
	return s
}

func (f *fakeAWS) getSecretValue(w http.ResponseWriter, in map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secret(w, in)
	if s == nil {
		return
	}
	vid, _ := in["VersionId"].(string)
	stage, _ := in["VersionStage"].(string)
	if vid == "" && stage == "" {
		stage = "AWSCURRENT"
	}
	for _, v := range s.versions {
		if v.id == vid || (vid == "" && contains(v.stages, stage)) {
			jsonOK(w, map[string]any{"ARN": s.arn, "Name": s.name, "VersionId": v.id, "SecretString": v.value, "VersionStages": v.stages, "CreatedDate": float64(time.Now().Unix())})
			return
		}
	}
	jsonError(w, 400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret value for staging label: "+stage)
}

func (f *fakeAWS) describeSecret(w http.ResponseWriter, in map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secret(w, in)
	if s == nil {
		return
	}
	vs := map[string][]string{}
	for _, v := range s.versions {
		if len(v.stages) > 0 {
			vs[v.id] = v.stages
		}
	}
	jsonOK(w, map[string]any{"ARN": s.arn, "Name": s.name, "VersionIdsToStages": vs})
}

func (f *fakeAWS) batchGetSecretValue(w http.ResponseWriter, in map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids, _ := in["SecretIdList"].([]any)
	if len(ids) == 0 || len(ids) > 20 {
		jsonError(w, 400, "InvalidParameterException", "SecretIdList must hold 1 to 20 ids")
		return
	}
	var vals, errs []map[string]any
	for _, x := range ids {
		id, _ := x.(string)
		s := f.find(id)
		if s == nil {
			errs = append(errs, map[string]any{"SecretId": id, "ErrorCode": "ResourceNotFoundException", "Message": "Secrets Manager can't find the specified secret."})
			continue
		}
		for _, v := range s.versions {
			if contains(v.stages, "AWSCURRENT") {
				vals = append(vals, map[string]any{"ARN": s.arn, "Name": s.name, "VersionId": v.id, "SecretString": v.value, "VersionStages": v.stages})
			}
		}
	}
	jsonOK(w, map[string]any{"SecretValues": vals, "Errors": errs})
}

func (f *fakeAWS) getParameters(w http.ResponseWriter, in map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	names, _ := in["Names"].([]any)
	if len(names) == 0 || len(names) > 10 {
		jsonError(w, 400, "ValidationException", "Names must hold 1 to 10 names")
		return
	}
	if dec, _ := in["WithDecryption"].(bool); !dec {
		jsonError(w, 400, "ValidationException", "test server wants WithDecryption")
		return
	}
	params, invalid := []map[string]any{}, []string{}
	for _, x := range names {
		n, _ := x.(string)
		v, ok := f.params[n]
		if !ok {
			invalid = append(invalid, n)
			continue
		}
		params = append(params, map[string]any{"Name": n, "Type": "SecureString", "Value": v, "Version": 1,
			"ARN": fmt.Sprintf("arn:aws:ssm:%s:111122223333:parameter%s", f.region, n)})
	}
	jsonOK(w, map[string]any{"Parameters": params, "InvalidParameters": invalid})
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// verifySigV4 recomputes the request's AWS Signature Version 4 from the credentials this
// server issued and compares it with the one the client sent.
func (f *fakeAWS) verifySigV4(r *http.Request, body []byte, service string) error {
	auth := r.Header.Get("Authorization")
	const algo = "AWS4-HMAC-SHA256"
	rest, ok := strings.CutPrefix(auth, algo+" ")
	if !ok {
		return errors.New("no AWS4-HMAC-SHA256 Authorization header")
	}
	fields := map[string]string{}
	for _, p := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		fields[k] = v
	}
	cred := strings.Split(fields["Credential"], "/")
	if len(cred) != 5 || cred[4] != "aws4_request" {
		return fmt.Errorf("bad credential scope %q", fields["Credential"])
	}
	akid, date, region, svc := cred[0], cred[1], cred[2], cred[3]
	if region != f.region || svc != service {
		return fmt.Errorf("scope %s/%s; want %s/%s", region, svc, f.region, service)
	}
	f.mu.Lock()
	c, ok := f.creds[akid]
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("unknown access key %s", akid)
	}
	if c.session != r.Header.Get("X-Amz-Security-Token") {
		return errors.New("security token does not match the access key")
	}
	amzDate := r.Header.Get("X-Amz-Date")
	ts, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil || !strings.HasPrefix(amzDate, date) {
		return fmt.Errorf("bad X-Amz-Date %q", amzDate)
	}
	if d := time.Since(ts); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Errorf("request time %s too far from now", ts)
	}
	sum := sha256.Sum256(body)
	payload := hex.EncodeToString(sum[:])
	if h := r.Header.Get("X-Amz-Content-Sha256"); h != "" && h != payload {
		return errors.New("X-Amz-Content-Sha256 does not match the body")
	}
	signed := strings.Split(fields["SignedHeaders"], ";")
	if !contains(signed, "host") || !contains(signed, "x-amz-date") {
		return fmt.Errorf("signed headers %v miss host or x-amz-date", signed)
	}
	var canonHeaders strings.Builder
	for _, h := range signed {
		var v string
		switch h {
		case "host":
			v = r.Host
		case "content-length":
			v = strconv.FormatInt(r.ContentLength, 10)
		default:
			vals := r.Header.Values(h)
			for i := range vals {
				vals[i] = strings.Join(strings.Fields(vals[i]), " ")
			}
			v = strings.Join(vals, ",")
		}
		canonHeaders.WriteString(h + ":" + v + "\n")
	}
	canonPath := r.URL.EscapedPath()
	if canonPath == "" {
		canonPath = "/"
	}
	canonical := strings.Join([]string{r.Method, canonPath, canonicalQuery(r.URL.Query()), canonHeaders.String(), fields["SignedHeaders"], payload}, "\n")
	crSum := sha256.Sum256([]byte(canonical))
	scope := strings.Join(cred[1:], "/")
	toSign := algo + "\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(crSum[:])
	key := hmacSHA256([]byte("AWS4"+c.secret), date)
	key = hmacSHA256(key, region)
	key = hmacSHA256(key, svc)
	key = hmacSHA256(key, "aws4_request")
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if !hmac.Equal([]byte(want), []byte(fields["Signature"])) {
		return errors.New("signature does not match")
	}
	return nil
}

func canonicalQuery(q url.Values) string {
	var parts []string
	for k, vs := range q {
		for _, v := range vs {
			parts = append(parts, url.QueryEscape(k)+"="+url.QueryEscape(v))
		}
	}
	sort.Strings(parts)
	return strings.ReplaceAll(strings.Join(parts, "&"), "+", "%20")
}

func hmacSHA256(key []byte, s string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return m.Sum(nil)
}

// serveSTS answers AssumeRoleWithWebIdentity (query protocol, XML), which is unsigned: the
// web-identity token is the credential, verified against the cluster's OIDC keys.
func (f *fakeAWS) serveSTS(w http.ResponseWriter, r *http.Request, body []byte) {
	form, err := url.ParseQuery(string(body))
	if err != nil || form.Get("Action") != "AssumeRoleWithWebIdentity" || form.Get("Version") != "2011-06-15" {
		stsError(w, 400, "InvalidAction", "want Action=AssumeRoleWithWebIdentity&Version=2011-06-15")
		return
	}
	f.mu.Lock()
	f.calls["AssumeRoleWithWebIdentity"]++
	f.mu.Unlock()
	if form.Get("RoleArn") != f.roleARN {
		stsError(w, 403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
		return
	}
	if f.oidc == nil {
		stsError(w, 400, "InvalidIdentityToken", "no OIDC provider configured")
		return
	}
	claims, err := f.oidc.verify(form.Get("WebIdentityToken"))
	if err != nil {
		stsError(w, 400, "InvalidIdentityToken", err.Error())
		return
	}
	if !claims.hasAudience(f.wantAud) {
		stsError(w, 400, "InvalidIdentityToken", "Incorrect token audience")
		return
	}
	if claims.Sub != f.wantSub {
		stsError(w, 403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
		return
	}
	akid := "ASIA" + strings.ToUpper(randHex(8))
	is := issued{secret: randHex(20), session: randHex(32)}
	f.mu.Lock()
	f.creds[akid] = is
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>%s</SubjectFromWebIdentityToken>
    <AssumedRoleUser><Arn>%s/%s</Arn><AssumedRoleId>AROA:%s</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>%s</SessionToken>
      <SecretAccessKey>%s</SecretAccessKey>
      <Expiration>%s</Expiration>
      <AccessKeyId>%s</AccessKeyId>
    </Credentials>
    <Audience>%s</Audience>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>`, xmlEsc(claims.Sub), f.roleARN, form.Get("RoleSessionName"), form.Get("RoleSessionName"),
		is.session, is.secret, time.Now().Add(time.Hour).UTC().Format(time.RFC3339), akid, f.wantAud, randHex(8))
}

func stsError(w http.ResponseWriter, code int, typ, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(code)
	fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>`, typ, xmlEsc(msg), randHex(8))
}

func xmlEsc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// oidcVerifier checks RS256 and ES256 JWTs against a JWKS fetched from an OIDC issuer's discovery.
type oidcVerifier struct {
	issuer string
	keys   map[string]crypto.PublicKey
}

type jwtClaims struct {
	Iss string          `json:"iss"`
	Sub string          `json:"sub"`
	Aud json.RawMessage `json:"aud"`
	Exp int64           `json:"exp"`
	Nbf int64           `json:"nbf"`
}

func (c jwtClaims) hasAudience(a string) bool {
	var list []string
	if json.Unmarshal(c.Aud, &list) != nil {
		var one string
		json.Unmarshal(c.Aud, &one)
		list = []string{one}
	}
	return contains(list, a)
}

// newOIDCVerifier reads <issuer>/.well-known/openid-configuration and its jwks_uri with client.
func newOIDCVerifier(client *http.Client, issuerURL string) (*oidcVerifier, error) {
	var disc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := getJSON(client, strings.TrimSuffix(issuerURL, "/")+"/.well-known/openid-configuration", &disc); err != nil {
		return nil, err
	}
	var jwks struct {
		Keys []struct {
			Kid, Kty, Alg, N, E, Crv, X, Y string
		} `json:"keys"`
	}
	// The discovery document names the issuer's public URL; ask the same server for it.
	u, err := url.Parse(disc.JWKSURI)
	if err != nil {
		return nil, err
	}
	base, _ := url.Parse(issuerURL)
	u.Scheme, u.Host = base.Scheme, base.Host
	if err := getJSON(client, u.String(), &jwks); err != nil {
		return nil, err
	}
	v := &oidcVerifier{issuer: disc.Issuer, keys: map[string]crypto.PublicKey{}}
	b64 := func(s string) *big.Int {
		b, _ := base64.RawURLEncoding.DecodeString(s)
		return new(big.Int).SetBytes(b)
	}
	for _, k := range jwks.Keys {
		switch {
		case k.Kty == "RSA":
			v.keys[k.Kid] = &rsa.PublicKey{N: b64(k.N), E: int(b64(k.E).Int64())}
		case k.Kty == "EC" && k.Crv == "P-256":
			v.keys[k.Kid] = &ecdsa.PublicKey{Curve: elliptic.P256(), X: b64(k.X), Y: b64(k.Y)}
		}
	}
	if len(v.keys) == 0 {
		return nil, errors.New("JWKS has no RSA or P-256 keys")
	}
	return v, nil
}

func getJSON(c *http.Client, u string, out any) error {
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (v *oidcVerifier) verify(tok string) (jwtClaims, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return jwtClaims{}, errors.New("not a JWT")
	}
	var hdr struct{ Alg, Kid string }
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(hb, &hdr) != nil {
		return jwtClaims{}, errors.New("bad JWT header")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return jwtClaims{}, errors.New("bad JWT signature encoding")
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	ok := false
	switch key := v.keys[hdr.Kid].(type) {
	case *rsa.PublicKey:
		ok = hdr.Alg == "RS256" && rsa.VerifyPKCS1v15(key, crypto.SHA256, sum[:], sig) == nil
	case *ecdsa.PublicKey:
		ok = hdr.Alg == "ES256" && len(sig) == 64 &&
			ecdsa.Verify(key, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	default:
		return jwtClaims{}, fmt.Errorf("unknown signing key %q", hdr.Kid)
	}
	if !ok {
		return jwtClaims{}, errors.New("JWT signature does not verify against the issuer's JWKS")
	}
	var c jwtClaims
	cb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(cb, &c) != nil {
		return jwtClaims{}, errors.New("bad JWT claims")
	}
	now := time.Now().Unix()
	if c.Iss != v.issuer {
		return jwtClaims{}, fmt.Errorf("issuer %q is not %q", c.Iss, v.issuer)
	}
	if c.Exp < now || (c.Nbf != 0 && c.Nbf > now+60) {
		return jwtClaims{}, errors.New("token expired or not yet valid")
	}
	return c, nil
}
