// Package pki is ferry's cluster certificate authority: it creates the CA,
// issues node and caller certificates, and builds the mutual-TLS
// configurations every ferry endpoint uses.
//
// Vocabulary:
//
//   - CA: one ECDSA P-256 key pair per cluster (ca.crt, ca.key in the TLS
//     directory). Whoever holds ca.key can mint identities; keep it on the
//     controller or offline.
//   - identity: a certificate and key issued by the CA (NAME.crt, NAME.key),
//     carrying the holder's name (CommonName, and a DNS SAN), its addresses
//     (IP SANs) and its role.
//   - role: what the holder may do. It is encoded twice in the certificate,
//     as the Subject OrganizationalUnit and as a URI SAN
//     "ferry://role/<role>/<name>"; both must agree. Roles are agent (a node
//     daemon), server (the controller) and client (an operator's read-only
//     key). Authorization decisions (which role may call what) belong to the
//     services; see RoleOf.
//
// Every connection is TLS 1.3 with certificates required and verified
// against the cluster CA on both sides. Keys are written with mode 0600.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Errors with kinds.
var (
	// ErrExists: the CA or identity files are already there.
	ErrExists = errors.New("already exists")
	// ErrInvalid: a bad name, role, address or certificate.
	ErrInvalid = errors.New("invalid")
	// ErrNoRole: a peer certificate carries no (or an inconsistent) role.
	ErrNoRole = errors.New("certificate carries no valid ferry role")
)

// Role is what an identity may do.
type Role string

const (
	RoleAgent  Role = "agent"
	RoleServer Role = "server"
	RoleClient Role = "client"
)

// ParseRole checks s names a role.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleAgent, RoleServer, RoleClient:
		return r, nil
	}
	return "", fmt.Errorf("%w: role %q: want agent, server or client", ErrInvalid, s)
}

// File names inside a TLS directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// CertFile and KeyFile name an identity's files inside a TLS directory.
func CertFile(dir, name string) string { return filepath.Join(dir, name+".crt") }
func KeyFile(dir, name string) string  { return filepath.Join(dir, name+".key") }

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// ValidName reports whether name may name an identity (it becomes a file
// name and a DNS SAN).
func ValidName(name string) error {
	if !nameRE.MatchString(name) || name == "ca" {
		return fmt.Errorf("%w: name %q: want 1-63 letters, digits, '.', '_' or '-', not \"ca\"", ErrInvalid, name)
	}
	return nil
}

// Init creates a new cluster CA in dir (created 0700 if missing). It refuses
// to overwrite an existing CA.
func Init(dir string, now time.Time) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []string{CACertFile, CAKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("%w: %s", ErrExists, filepath.Join(dir, f))
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "ferry cluster CA", Organization: []string{"ferry"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, CAKeyFile), key); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, CACertFile), "CERTIFICATE", der, 0o644)
}

// IssueRequest names the identity to issue.
type IssueRequest struct {
	Name string
	Role Role
	// IPs and DNS names the holder serves on (IP SANs, DNS SANs). The name
	// itself is always added as a DNS SAN; 127.0.0.1 and "localhost" are
	// added when IPs is empty.
	IPs      []net.IP
	DNSNames []string
	// Validity; default one year.
	Validity time.Duration
}

// Issue signs a new identity with the CA in dir and writes NAME.crt and
// NAME.key (0600). It refuses to overwrite an existing identity.
func Issue(dir string, req IssueRequest, now time.Time) error {
	if err := ValidName(req.Name); err != nil {
		return err
	}
	if _, err := ParseRole(string(req.Role)); err != nil {
		return err
	}
	for _, f := range []string{CertFile(dir, req.Name), KeyFile(dir, req.Name)} {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("%w: %s", ErrExists, f)
		}
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	validity := req.Validity
	if validity <= 0 {
		validity = 365 * 24 * time.Hour
	}
	ips := req.IPs
	dns := append([]string{req.Name}, req.DNSNames...)
	if len(ips) == 0 {
		ips = []net.IP{net.IPv4(127, 0, 0, 1)}
		dns = append(dns, "localhost")
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject: pkix.Name{
			CommonName:         req.Name,
			Organization:       []string{"ferry"},
			OrganizationalUnit: []string{string(req.Role)},
		},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: ips,
		DNSNames:    dns,
		URIs:        []*url.URL{RoleURI(req.Role, req.Name)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := writeKey(KeyFile(dir, req.Name), key); err != nil {
		return err
	}
	return writePEM(CertFile(dir, req.Name), "CERTIFICATE", der, 0o644)
}

// RoleURI is the URI SAN that carries a role: ferry://role/<role>/<name>.
func RoleURI(r Role, name string) *url.URL {
	return &url.URL{Scheme: "ferry", Host: "role", Path: "/" + string(r) + "/" + name}
}

// RoleOf returns the role and name a verified certificate carries. The OU and
// the URI SAN must agree.
func RoleOf(c *x509.Certificate) (Role, string, error) {
	var ou Role
	if len(c.Subject.OrganizationalUnit) == 1 {
		r, err := ParseRole(c.Subject.OrganizationalUnit[0])
		if err == nil {
			ou = r
		}
	}
	for _, u := range c.URIs {
		if u.Scheme != "ferry" || u.Host != "role" {
			continue
		}
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if len(parts) != 2 {
			continue
		}
		r, err := ParseRole(parts[0])
		if err != nil || r != ou || parts[1] != c.Subject.CommonName {
			return "", "", fmt.Errorf("%w: subject %q", ErrNoRole, c.Subject.String())
		}
		return r, parts[1], nil
	}
	return "", "", fmt.Errorf("%w: subject %q", ErrNoRole, c.Subject.String())
}

// Identity is a loaded certificate with the cluster CA that verifies peers.
type Identity struct {
	Name string
	Role Role
	Cert tls.Certificate
	CAs  *x509.CertPool
}

// Load reads NAME.crt, NAME.key and ca.crt from dir.
func Load(dir, name string) (*Identity, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(CertFile(dir, name), KeyFile(dir, name))
	if err != nil {
		return nil, fmt.Errorf("load identity %q from %s: %w", name, dir, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, CertFile(dir, name), err)
	}
	cert.Leaf = leaf
	role, _, err := RoleOf(leaf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CertFile(dir, name), err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: %s holds no certificate", ErrInvalid, filepath.Join(dir, CACertFile))
	}
	return &Identity{Name: name, Role: role, Cert: cert, CAs: pool}, nil
}

// ServerConfig is the TLS configuration of a ferry service: TLS 1.3,
// client certificates required and verified against the cluster CA, and a
// role present in the client certificate (services then authorize by role
// with PeerRole). HTTP/2 is not offered (services use HTTP/1.1 upgrades).
func (id *Identity) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    id.CAs,
		NextProtos:   []string{"http/1.1"},
		VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
			if len(chains) == 0 || len(chains[0]) == 0 {
				return ErrNoRole
			}
			_, _, err := RoleOf(chains[0][0])
			return err
		},
	}
}

// ClientConfig is the TLS configuration for calling a ferry service: TLS
// 1.3, the service's certificate verified against the cluster CA (by the
// address dialled), and this identity presented.
func (id *Identity) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		RootCAs:      id.CAs,
		NextProtos:   []string{"http/1.1"},
	}
}

// PeerRole returns the role and name of the verified peer of a connection.
func PeerRole(cs *tls.ConnectionState) (Role, string, error) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", "", ErrNoRole
	}
	return RoleOf(cs.VerifiedChains[0][0])
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, nil, fmt.Errorf("load CA (run `ferry tls init` first): %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("load CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%w: %s is not a PEM certificate", ErrInvalid, CACertFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrInvalid, CACertFile, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "EC PRIVATE KEY" {
		return nil, nil, fmt.Errorf("%w: %s is not a PEM EC key", ErrInvalid, CAKeyFile)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrInvalid, CAKeyFile, err)
	}
	return cert, key, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: der}); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}
