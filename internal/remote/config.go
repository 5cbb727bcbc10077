package remote

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
)

// ErrConfig is wrapped by errors about ~/.ssh/config or a ProxyJump in it.
var ErrConfig = errors.New("ssh config")

// sshConfig is the user's ~/.ssh/config and the system's ssh_config, read the way ssh reads
// them: for each keyword the first value found wins, the user's file before the system's.
type sshConfig struct {
	files []*ssh_config.Config
	paths []string
	// skipped says which files after the first could not be read, and why.
	skipped []string
}

func loadSSHConfig(paths ...string) (*sshConfig, error) {
	c := &sshConfig{}
	for i, p := range paths {
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: read %s: %v", ErrConfig, p, err)
		}
		cfg, err := ssh_config.Decode(f)
		f.Close()
		if err != nil && i > 0 {
			// The system's file (and what it includes) is the distribution's, which may
			// hold what handoff cannot read (Fedora's `Match final all`): ssh's own
			// settings, seldom a host's. It is left out, and said so.
			c.skipped = append(c.skipped, fmt.Sprintf("%s not read (%s): handoff goes on without it; put what a server needs in %s", p, firstLine(err.Error()), paths[0]))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: read %s: %v", ErrConfig, p, firstLine(err.Error()))
		}
		c.files = append(c.files, cfg)
		c.paths = append(c.paths, p)
	}
	return c, nil
}

// get returns the first value of key for host alias, or "".
func (c *sshConfig) get(alias, key string) (string, error) {
	for i, f := range c.files {
		v, err := f.Get(alias, key)
		if err != nil {
			return "", fmt.Errorf("%w: %s in %s: %v", ErrConfig, key, c.paths[i], err)
		}
		if v != "" {
			return v, nil
		}
	}
	return "", nil
}

// getAll returns every value of key for host alias, from every file.
func (c *sshConfig) getAll(alias, key string) ([]string, error) {
	var all []string
	for i, f := range c.files {
		v, err := f.GetAll(alias, key)
		if err != nil {
			return nil, fmt.Errorf("%w: %s in %s: %v", ErrConfig, key, c.paths[i], err)
		}
		all = append(all, v...)
	}
	return all, nil
}

// proxy returns the first ProxyJump or ProxyCommand that applies to alias, its key in
// lower case and its value: ssh holds the two as one setting, so whichever it meets first
// wins, even when the other comes in a more specific block further down.
func (c *sshConfig) proxy(alias string) (key, value string, err error) {
	for i, f := range c.files {
		for _, h := range f.Hosts {
			if !h.Matches(alias) {
				continue
			}
			for _, n := range h.Nodes {
				switch n := n.(type) {
				case *ssh_config.KV:
					if k := strings.ToLower(n.Key); (k == "proxyjump" || k == "proxycommand") && n.Value != "" {
						return k, n.Value, nil
					}
				case *ssh_config.Include:
					// The library keeps an Include's files to itself: each key is asked
					// for apart. With both set in one Include their order is unknown; a
					// ProxyCommand other than none is refused then, as ssh might run it.
					j, pc := n.Get(alias, "ProxyJump"), n.Get(alias, "ProxyCommand")
					switch {
					case pc != "" && (j == "" || pc != "none"):
						return "proxycommand", pc, nil
					case j != "":
						return "proxyjump", j, nil
					}
				case *ssh_config.Empty:
				default:
					return "", "", fmt.Errorf("%w: ProxyJump in %s: unknown line %v", ErrConfig, c.paths[i], n)
				}
			}
		}
	}
	return "", "", nil
}

// endpoint is one SSH server to log in to, with everything ~/.ssh/config says about it.
type endpoint struct {
	alias    string // the name as the user wrote it
	hostname string // what is dialled and looked up in known_hosts
	port     int
	user     string
	// identityFiles are the keys to offer after the agent's, in order.
	identityFiles []string
	// knownHosts are the files to check the host key against; the first is where a
	// missing key should be added.
	knownHosts []string
	agent      string // the agent socket, "" for none
	// identitiesOnly: the agent's keys are offered only when they are one of
	// identityFiles (IdentitiesOnly yes), as ssh does.
	identitiesOnly bool
	jumps          []string
	timeout        time.Duration
	keepAlive      time.Duration
	keepCount      int
}

func (e endpoint) addr() string { return net.JoinHostPort(e.hostname, strconv.Itoa(e.port)) }

// String names the endpoint for messages: user@host:port, and the alias when it differs.
func (e endpoint) String() string {
	s := e.user + "@" + e.addr()
	if e.alias != e.hostname {
		s += " (" + e.alias + ")"
	}
	return s
}

// resolve fills in t from the ssh config the way ssh does: an address's own user and port
// win over the config's, the config's over the defaults.
func (o *Options) resolve(c *sshConfig, t Target) (endpoint, error) {
	e := endpoint{alias: t.Host, user: t.User, port: t.Port}
	var firstErr error
	get := func(key string) string {
		v, err := c.get(t.Host, key)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return v
	}
	e.hostname = t.Host
	if h := get("HostName"); h != "" {
		e.hostname = strings.ReplaceAll(strings.ReplaceAll(h, "%h", t.Host), "%%", "%")
	}
	if e.user == "" {
		e.user = cmp.Or(get("User"), o.LocalUser)
	}
	if e.port == 0 {
		if p := get("Port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return e, fmt.Errorf("%w: Port %q for host %s is not a number from 1 to 65535", ErrConfig, p, t.Host)
			}
			e.port = n
		} else {
			e.port = DefaultPort
		}
	}
	ids, err := c.getAll(t.Host, "IdentityFile")
	if err != nil {
		return e, err
	}
	for _, id := range ids {
		e.identityFiles = append(e.identityFiles, o.expand(id, e))
	}
	if len(e.identityFiles) == 0 {
		// The _sk files (security keys) are used only through the agent, which signs with
		// the device: x/crypto parses no sk private key, so the file itself is skipped, but
		// its .pub lets IdentitiesOnly offer the agent's key, as ssh does.
		for _, name := range []string{"id_ed25519", "id_ed25519_sk", "id_ecdsa", "id_ecdsa_sk", "id_rsa"} {
			e.identityFiles = append(e.identityFiles, filepath.Join(o.Home, ".ssh", name))
		}
	}
	if o.KnownHostsPath != "" {
		e.knownHosts = []string{o.KnownHostsPath}
	} else {
		// ssh_config's known-hosts keywords: files, or OpenSSH's defaults; "none" is none.
		for _, kw := range []struct {
			key      string
			defaults []string
		}{
			{"UserKnownHostsFile", []string{"~/.ssh/known_hosts", "~/.ssh/known_hosts2"}},
			{"GlobalKnownHostsFile", []string{"/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"}},
		} {
			files := strings.Fields(get(kw.key))
			if len(files) == 0 {
				files = kw.defaults
			}
			for _, f := range files {
				if f != "none" {
					e.knownHosts = append(e.knownHosts, o.expand(f, e))
				}
			}
		}
	}
	switch a := cmp.Or(o.AgentSocket, get("IdentityAgent")); a {
	case "none":
	case "", "SSH_AUTH_SOCK":
		e.agent = os.Getenv("SSH_AUTH_SOCK")
	default:
		if strings.HasPrefix(a, "$") {
			e.agent = os.Getenv(strings.TrimPrefix(a, "$"))
		} else {
			e.agent = o.expand(a, e)
		}
	}
	switch key, v, err := c.proxy(t.Host); {
	case err != nil:
		return e, err
	case key == "proxycommand" && v != "none":
		return e, fmt.Errorf("%w: ProxyCommand for host %s is not supported (handoff makes the SSH connection itself): use ProxyJump, or set ProxyCommand none for this host above the Host * block", ErrConfig, t.Host)
	case key == "proxyjump" && v != "none":
		e.jumps = strings.Split(v, ",")
	}
	e.identitiesOnly = strings.EqualFold(get("IdentitiesOnly"), "yes")
	if v := get("ConnectTimeout"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			e.timeout = time.Duration(n) * time.Second
		}
	}
	e.timeout = cmp.Or(e.timeout, o.ConnectTimeout)
	if v := get("ServerAliveInterval"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			e.keepAlive = time.Duration(n) * time.Second
		}
	}
	e.keepAlive = cmp.Or(o.KeepAliveInterval, e.keepAlive, DefaultKeepAliveInterval)
	if v := get("ServerAliveCountMax"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			e.keepCount = n
		}
	}
	e.keepCount = cmp.Or(o.KeepAliveCountMax, e.keepCount, DefaultKeepAliveCountMax)
	return e, firstErr
}

// parseJump reads one ProxyJump entry: [user@]host[:port] or ssh://[user@]host[:port].
func parseJump(s string) (Target, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "ssh://") {
		return Parse(s)
	}
	t, err := Parse("ssh://" + s)
	if err != nil {
		return Target{}, fmt.Errorf("%w: ProxyJump %q is not [user@]host[:port]", ErrConfig, s)
	}
	return t, nil
}

// chain resolves t and the jump hosts in front of it, first hop first. A jump host's own
// ProxyJump is followed too, as ssh does; a loop is refused.
func (o *Options) chain(c *sshConfig, t Target) ([]endpoint, error) {
	var hops []endpoint
	var walk func(t Target, depth int) error
	walk = func(t Target, depth int) error {
		if depth > 8 {
			return fmt.Errorf("%w: ProxyJump for %s goes through more than 8 hosts (a loop?)", ErrConfig, t.Host)
		}
		e, err := o.resolve(c, t)
		if err != nil {
			return err
		}
		for _, j := range e.jumps {
			jt, err := parseJump(j)
			if err != nil {
				return err
			}
			if err := walk(jt, depth+1); err != nil {
				return err
			}
		}
		hops = append(hops, e)
		return nil
	}
	if err := walk(t, 0); err != nil {
		return nil, err
	}
	return hops, nil
}

// expand does ssh's ~ and % expansion for file names in the config.
func (o *Options) expand(s string, e endpoint) string {
	if s == "~" {
		s = o.Home
	} else if strings.HasPrefix(s, "~/") {
		s = filepath.Join(o.Home, s[2:])
	}
	r := strings.NewReplacer("%d", o.Home, "%h", e.hostname, "%n", e.alias, "%p", strconv.Itoa(e.port),
		"%r", e.user, "%u", o.LocalUser, "%%", "%")
	return r.Replace(s)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
