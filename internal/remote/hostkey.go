package remote

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

var (
	// ErrUnknownHost: the server's host key is in no known_hosts file.
	ErrUnknownHost = errors.New("ssh: unknown host")
	// ErrHostKeyChanged: known_hosts has another key for the server.
	ErrHostKeyChanged = errors.New("ssh: host key changed")
)

// hostKeys checks a server's key against known_hosts files, and never accepts a key that
// is not there.
type hostKeys struct {
	check ssh.HostKeyCallback // nil when no known_hosts file exists
	add   string              // where the user should add a missing key
}

func newHostKeys(files []string) (*hostKeys, error) {
	hk := &hostKeys{}
	var existing []string
	for _, f := range files {
		if hk.add == "" {
			hk.add = f
		}
		if _, err := os.Stat(f); err == nil {
			existing = append(existing, f)
		}
	}
	if len(existing) > 0 {
		cb, err := knownhosts.New(existing...)
		if err != nil {
			return nil, fmt.Errorf("read known hosts: %w", err)
		}
		hk.check = cb
	}
	return hk, nil
}

// callback checks the key e's server offers; a refusal is a one-line error that says what to do.
func (hk *hostKeys) callback(e endpoint) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		var err error = &knownhosts.KeyError{}
		if hk.check != nil {
			err = hk.check(hostname, remote, key)
		}
		var ke *knownhosts.KeyError
		var re *knownhosts.RevokedError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &re):
			return fmt.Errorf("%w: %s offered the key %s %s, which %s:%d marks as revoked; refused",
				ErrHostKeyChanged, e.addr(), key.Type(), ssh.FingerprintSHA256(key), re.Revoked.Filename, re.Revoked.Line)
		case errors.As(err, &ke) && len(ke.Want) == 0:
			return fmt.Errorf("%w: %s is not in %s; it offered %s %s: check that this is the server's own key "+
				"(on the server: ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub), then add it with: ssh-keyscan -p %d %s >> %s",
				ErrUnknownHost, e.addr(), hk.add, key.Type(), ssh.FingerprintSHA256(key),
				keyFileType(key.Type()), e.port, e.hostname, hk.add)
		case errors.As(err, &ke):
			w := ke.Want[0]
			return fmt.Errorf("%w: %s offered %s %s but %s:%d has %s %s for it: this may be a man-in-the-middle attack, "+
				"so handoff refuses it; if the server was reinstalled, check its new key, then remove the old one with: ssh-keygen -R %s -f %s",
				ErrHostKeyChanged, e.addr(), key.Type(), ssh.FingerprintSHA256(key), w.Filename, w.Line,
				w.Key.Type(), ssh.FingerprintSHA256(w.Key), Quote(knownhosts.Normalize(e.addr())), w.Filename)
		default:
			return fmt.Errorf("check host key of %s: %w", e.addr(), err)
		}
	}
}

// algorithms are the host key algorithms to ask the server for: those of the keys
// known_hosts has for it, so that a server with an RSA and an Ed25519 key, of which only
// one is known, shows the known one instead of looking changed. Nil means any.
func (hk *hostKeys) algorithms(hostname string, remote net.Addr) []string {
	if hk.check == nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if err := hk.check(hostname, remote, probeKey); !errors.As(err, &ke) {
		return nil
	}
	var algos []string
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			algos = append(algos, t)
		}
	}
	return algos
}

// probeKey is a key no known_hosts holds: checking it lists the keys that are known.
var probeKey = func() ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		panic(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return k
}()

// keyFileType is the name sshd gives the host key file of a key type.
func keyFileType(t string) string {
	switch t {
	case ssh.KeyAlgoED25519:
		return "ed25519"
	case ssh.KeyAlgoRSA:
		return "rsa"
	default:
		return "ecdsa"
	}
}

// remoteAddr is the address known_hosts is checked against for a hop reached through another.
func remoteAddr(c net.Conn, e endpoint) net.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok && a.Port != 0 {
		return a
	}
	ip := net.ParseIP(e.hostname)
	if ip == nil {
		ip = net.IPv4zero
	}
	return &net.TCPAddr{IP: ip, Port: e.port}
}
