package remote

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

var (
	// ErrNoKey: there is no key to log in with (no agent key, no readable key file).
	ErrNoKey = errors.New("ssh: no key to log in with")
	// ErrKeyLocked: the only keys are protected by a passphrase and no agent holds them.
	ErrKeyLocked = errors.New("ssh: key protected by a passphrase")
	// ErrAuth: the server refused every key offered.
	ErrAuth = errors.New("ssh: login refused")
)

// keys are what handoff can log in with: the agent's keys first, then the identity files
// that need no passphrase. handoff never asks for a passphrase: a protected key is used
// through the agent (ssh-add).
type keys struct {
	agent   agent.ExtendedAgent
	agentC  net.Conn
	agentOK bool
}

func openAgent(sock string) *keys {
	k := &keys{}
	if sock == "" {
		return k
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		return k
	}
	k.agentC, k.agent, k.agentOK = c, agent.NewClient(c), true
	return k
}

func (k *keys) close() {
	if k.agentC != nil {
		k.agentC.Close()
	}
}

// signers are the keys to offer e's server, and the protected key files left out.
func (k *keys) signers(e endpoint) (signers []ssh.Signer, locked []string) {
	seen := map[string]bool{}
	if k.agentOK {
		if as, err := k.agent.Signers(); err == nil {
			var only map[string]bool
			if e.identitiesOnly {
				only = identityPublicKeys(e.identityFiles)
			}
			for _, s := range as {
				key := string(s.PublicKey().Marshal())
				if only != nil && !only[key] {
					continue
				}
				seen[key] = true
				signers = append(signers, s)
			}
		}
	}
	for _, f := range e.identityFiles {
		pem, err := os.ReadFile(f)
		if err != nil {
			continue // ssh, too, goes on without a missing identity file
		}
		s, err := ssh.ParsePrivateKey(pem)
		var pm *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pm):
			pub := pm.PublicKey
			if pub == nil {
				pub = publicKeyBeside(f)
			}
			if pub == nil || !seen[string(pub.Marshal())] {
				locked = append(locked, f)
			}
			continue
		case err != nil:
			continue
		}
		if !seen[string(s.PublicKey().Marshal())] {
			seen[string(s.PublicKey().Marshal())] = true
			signers = append(signers, s)
		}
	}
	return signers, locked
}

// identityPublicKeys are the public keys of files (IdentitiesOnly: the agent
// keys that may be offered): read from the key file, or from f.pub beside it
// when the file is protected or missing, as ssh does. The file may be a public
// key itself (IdentityFile ~/.ssh/key.pub, the private half in an agent such
// as 1Password's).
func identityPublicKeys(files []string) map[string]bool {
	keys := map[string]bool{}
	for _, f := range files {
		var pub ssh.PublicKey
		if pem, err := os.ReadFile(f); err == nil {
			s, err := ssh.ParsePrivateKey(pem)
			var pm *ssh.PassphraseMissingError
			switch {
			case err == nil:
				pub = s.PublicKey()
			case errors.As(err, &pm):
				pub = pm.PublicKey
			default:
				pub, _, _, _, _ = ssh.ParseAuthorizedKey(bytes.TrimSpace(pem))
			}
		}
		if pub == nil {
			pub = publicKeyBeside(f)
		}
		if pub != nil {
			keys[string(pub.Marshal())] = true
		}
	}
	return keys
}

// publicKeyBeside reads f.pub, for older key formats whose public half is encrypted too.
func publicKeyBeside(f string) ssh.PublicKey {
	b, err := os.ReadFile(f + ".pub")
	if err != nil {
		return nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(bytes.TrimSpace(b))
	if err != nil {
		return nil
	}
	return pub
}

// noKeyError says what to do when there is nothing to offer e's server.
func noKeyError(e endpoint, locked []string) error {
	if len(locked) > 0 {
		return fmt.Errorf("%w: %s needs its passphrase and no SSH agent holds it (handoff does not ask for passphrases): run ssh-add %s",
			ErrKeyLocked, locked[0], locked[0])
	}
	return fmt.Errorf("%w to %s: no SSH agent key and none of %s: start ssh-agent and ssh-add your key, or make one with ssh-keygen -t ed25519",
		ErrNoKey, e, strings.Join(e.identityFiles, ", "))
}

// authError says what to do when e's server refused every key offered.
func authError(e endpoint, offered int, locked []string) error {
	hint := "add your public key to ~/.ssh/authorized_keys of " + e.user + " on the server"
	if len(locked) > 0 {
		hint = "run ssh-add " + locked[0] + " if that is the key the server knows, or " + hint
	}
	return fmt.Errorf("%w: %s refused the %d key(s) offered: %s", ErrAuth, e, offered, hint)
}
