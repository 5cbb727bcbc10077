// Package remote is handoff's SSH transport: one SSH connection to a server that carries
// everything a command needs there — the remote commands it runs, the files it uploads and
// the unix sockets it reaches (the server's Docker socket, the proxy's control socket).
//
// A command opens one Conn with Dial and uses it for everything; it never opens a second
// connection, so sshd's MaxStartups limit is never what stops a deploy. The host key is
// always checked against known_hosts and an unknown or changed key is refused, never
// accepted. Nothing secret belongs on a remote command line (it shows in the server's
// process list): callers pass secrets on Run's stdin.
package remote

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// DefaultPort is the SSH port used when neither the address nor ~/.ssh/config names one.
const DefaultPort = 22

// ErrBadTarget is wrapped by every error Parse returns.
var ErrBadTarget = errors.New("bad host address")

// Target is a server as the user wrote it: ssh://[user@]host[:port]. Host may be an alias
// from ~/.ssh/config; empty User and zero Port are filled in from there by Dial.
type Target struct {
	User string
	Host string
	Port int
}

// Parse reads an address of the form ssh://[user@]host[:port], as DOCKER_HOST writes it.
func Parse(s string) (Target, error) {
	bad := func(why string) (Target, error) {
		return Target{}, fmt.Errorf("%w %q: %s (write ssh://user@server or ssh://user@server:port)", ErrBadTarget, s, why)
	}
	if s == "" {
		return bad("empty")
	}
	if !strings.Contains(s, "://") {
		return bad("no scheme")
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("not a URL")
	}
	if u.Scheme != "ssh" {
		return bad(fmt.Sprintf("scheme %q is not ssh", u.Scheme))
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return bad("only a user, a host and a port may be given")
	}
	if _, has := u.User.Password(); has {
		return bad("no password in the address: handoff logs in with your SSH keys")
	}
	if strings.Count(u.Host, ":") > 1 && !strings.HasPrefix(u.Host, "[") {
		return bad("an IPv6 address goes in brackets: ssh://user@[::1]:22")
	}
	t := Target{User: u.User.Username(), Host: u.Hostname()}
	if t.Host == "" {
		return bad("no host")
	}
	if strings.ContainsAny(t.Host, " \t\r\n/@%") {
		return bad("the host has characters a host name cannot have")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return bad(fmt.Sprintf("port %q is not a number from 1 to 65535", p))
		}
		t.Port = n
	} else if strings.HasSuffix(u.Host, ":") {
		return bad("empty port")
	}
	return t, nil
}

// String writes the target back as an ssh:// address.
func (t Target) String() string {
	s := "ssh://"
	if t.User != "" {
		s += url.User(t.User).String() + "@"
	}
	host := t.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if t.Port != 0 {
		return s + net.JoinHostPort(t.Host, strconv.Itoa(t.Port))
	}
	return s + host
}
