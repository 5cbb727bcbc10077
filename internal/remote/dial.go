package remote

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	// DefaultConnectTimeout bounds the whole Dial when the context has no deadline and
	// ~/.ssh/config no ConnectTimeout.
	DefaultConnectTimeout = 20 * time.Second
	// DefaultKeepAliveInterval is how often an idle connection asks the server whether it
	// is still there (ssh's ServerAliveInterval).
	DefaultKeepAliveInterval = 15 * time.Second
	// DefaultKeepAliveCountMax is how many unanswered keepalives in a row end the
	// connection (ssh's ServerAliveCountMax).
	DefaultKeepAliveCountMax = 3
	// DefaultMaxSessions is how many Runs share the connection at once; more wait their
	// turn. sshd's MaxSessions is 10 by default, and a cancelled Run needs one more
	// session for a moment to end its command.
	DefaultMaxSessions = 8
)

// ErrUnreachable: the server (or a jump host) could not be reached or did not answer.
var ErrUnreachable = errors.New("ssh: cannot reach")

// Options are where Dial looks for the user's SSH setup. The zero value is the user's
// own: ~/.ssh/config, ~/.ssh/known_hosts, $SSH_AUTH_SOCK, ~/.ssh/id_*.
type Options struct {
	// Home is the directory ~ stands for; default: the user's home.
	Home string
	// ConfigPath is the user's ssh config; default: Home/.ssh/config.
	// os.DevNull reads none.
	ConfigPath string
	// SystemConfigPath is read after ConfigPath; default /etc/ssh/ssh_config.
	SystemConfigPath string
	// KnownHostsPath, when set, is the only known_hosts file, instead of
	// UserKnownHostsFile and GlobalKnownHostsFile from the config or their defaults.
	KnownHostsPath string
	// AgentSocket is the SSH agent's socket; default IdentityAgent from the config,
	// then $SSH_AUTH_SOCK. "none" uses no agent.
	AgentSocket string
	// LocalUser is the user name when neither the address nor the config names one;
	// default: the current user.
	LocalUser string
	// ConnectTimeout bounds Dial when ctx has no deadline; default from the config's
	// ConnectTimeout, then DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// KeepAliveInterval and KeepAliveCountMax: see DefaultKeepAlive*; the config's
	// ServerAliveInterval and ServerAliveCountMax are used when these are zero.
	KeepAliveInterval time.Duration
	KeepAliveCountMax int
	// MaxSessions is how many Runs at once (see DefaultMaxSessions); keep it below the
	// server's MaxSessions.
	MaxSessions int
	// Warn, when set, is told what Dial went on without (a system ssh config it cannot read).
	Warn func(msg string)
}

func (o Options) withDefaults() Options {
	if o.Home == "" {
		o.Home, _ = os.UserHomeDir()
	}
	o.ConfigPath = cmp.Or(o.ConfigPath, filepath.Join(o.Home, ".ssh", "config"))
	o.SystemConfigPath = cmp.Or(o.SystemConfigPath, "/etc/ssh/ssh_config")
	if o.LocalUser == "" {
		if u, err := user.Current(); err == nil {
			o.LocalUser = u.Username
		} else {
			o.LocalUser = os.Getenv("USER")
		}
	}
	return o
}

// Conn is one SSH connection to a server, over one TCP connection (through its jump
// hosts, if any). Everything a command does on the server goes through it; it is safe for
// concurrent use; Runs beyond Options.MaxSessions at once wait for a turn instead of
// being refused by the server.
type Conn struct {
	clients  []*ssh.Client // first hop first; the last is the server
	server   endpoint
	sessions chan struct{} // a token for each Run under way
	once     sync.Once
	done     chan struct{}
	err      error // why the connection ended, set before done is closed
}

// Dial opens the connection to t, as ssh would from the user's config: ProxyJump hosts are
// dialled through the connection to the one before, so only one TCP connection leaves
// this machine. ctx bounds the dial only; the Conn lives until Close or until the server
// stops answering keepalives.
func Dial(ctx context.Context, t Target, opts Options) (*Conn, error) {
	o := opts.withDefaults()
	cfg, err := loadSSHConfig(o.ConfigPath, o.SystemConfigPath)
	if err != nil {
		return nil, err
	}
	for _, msg := range cfg.skipped {
		if o.Warn != nil {
			o.Warn(msg)
		}
	}
	hops, err := o.chain(cfg, t)
	if err != nil {
		return nil, err
	}
	server := hops[len(hops)-1]
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cmp.Or(server.timeout, DefaultConnectTimeout))
		defer cancel()
	}
	c := &Conn{server: server, done: make(chan struct{}), sessions: make(chan struct{}, cmp.Or(o.MaxSessions, DefaultMaxSessions))}
	start := time.Now()
	for i, hop := range hops {
		var nc net.Conn
		if i == 0 {
			var d net.Dialer
			nc, err = d.DialContext(ctx, "tcp", hop.addr())
			if err != nil {
				c.closeClients()
				return nil, reachError(ctx, hop, err, start)
			}
		} else {
			nc, err = c.clients[i-1].DialContext(ctx, "tcp", hop.addr())
			if err != nil {
				c.closeClients()
				if ctx.Err() != nil {
					return nil, reachError(ctx, hop, ctx.Err(), start)
				}
				return nil, fmt.Errorf("%w %s through jump host %s: %v", ErrUnreachable, hop.addr(), hops[i-1], err)
			}
		}
		client, err := handshake(ctx, nc, hop, start)
		if err != nil {
			c.closeClients()
			return nil, err
		}
		c.clients = append(c.clients, client)
	}
	go c.watch()
	go c.keepAlive(server.keepAlive, server.keepCount)
	return c, nil
}

// handshake logs in to hop over nc; on failure nc is closed.
func handshake(ctx context.Context, nc net.Conn, hop endpoint, start time.Time) (*ssh.Client, error) {
	hk, err := newHostKeys(hop.knownHosts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	k := openAgent(hop.agent)
	defer k.close()
	signers, locked := k.signers(hop)
	if len(signers) == 0 {
		nc.Close()
		return nil, noKeyError(hop, locked)
	}
	var keyErr error
	check := hk.callback(hop)
	config := &ssh.ClientConfig{
		User: hop.user,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signers...)},
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			keyErr = check(hostname, remote, key)
			return keyErr
		},
		HostKeyAlgorithms: hk.algorithms(hop.addr(), remoteAddr(nc, hop)),
	}
	// The handshake has no context of its own: closing the connection ends it.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(nc, hop.addr(), config)
	if !stop() && err == nil {
		sc.Close()
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		switch {
		case keyErr != nil:
			return nil, keyErr
		case ctx.Err() != nil:
			return nil, reachError(ctx, hop, ctx.Err(), start)
		case strings.Contains(err.Error(), "unable to authenticate"):
			// x/crypto/ssh has no error value for this; its message is the only sign.
			return nil, authError(hop, len(signers), locked)
		default:
			return nil, fmt.Errorf("ssh: log in to %s: %v", hop, strings.TrimPrefix(err.Error(), "ssh: "))
		}
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

// reachError is the one line for a server that cannot be reached or does not answer.
func reachError(ctx context.Context, hop endpoint, err error, start time.Time) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w %s: no answer after %s (is the host up and the port right?)",
			ErrUnreachable, hop.addr(), time.Since(start).Round(time.Millisecond))
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w %s: %w", ErrUnreachable, hop.addr(), context.Canceled)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	return fmt.Errorf("%w %s: %v", ErrUnreachable, hop.addr(), err)
}

// watch records when the connection to the server ends, for whatever reason.
func (c *Conn) watch() {
	err := c.clients[len(c.clients)-1].Wait()
	c.end(fmt.Errorf("ssh: connection to %s ended: %v", c.server, err))
}

func (c *Conn) end(err error) {
	c.once.Do(func() {
		c.err = err
		c.closeClients()
		close(c.done)
	})
}

func (c *Conn) closeClients() {
	for i := len(c.clients) - 1; i >= 0; i-- {
		c.clients[i].Close()
	}
}

// keepAlive asks the server every interval whether it is there, and ends the connection
// after count unanswered asks in a row, so that a dead peer fails the command instead of
// hanging it.
func (c *Conn) keepAlive(interval time.Duration, count int) {
	client := c.clients[len(c.clients)-1]
	answered := make(chan struct{}, 1)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	missed, waiting := 0, false
	for {
		select {
		case <-c.done:
			return
		case <-answered:
			missed, waiting = 0, false
		case <-tick.C:
			if waiting {
				missed++
				if missed >= count {
					c.end(fmt.Errorf("ssh: %s stopped answering (%d keepalives of %s unanswered); connection closed", c.server, missed, interval))
					return
				}
				continue
			}
			waiting = true
			go func() {
				// OpenSSH answers this unknown request with a failure, which is an answer.
				if _, _, err := client.SendRequest("keepalive@openssh.com", true, nil); err == nil {
					select {
					case answered <- struct{}{}:
					default:
					}
				}
			}()
		}
	}
}

// Close ends the connection and everything still running over it.
func (c *Conn) Close() error {
	c.end(fmt.Errorf("ssh: connection to %s closed", c.server))
	return nil
}

// Done is closed when the connection has ended; Err then says why.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err says why the connection ended, nil while it is up.
func (c *Conn) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// String names the server: user@host:port, and the alias it was reached by.
func (c *Conn) String() string { return c.server.String() }
