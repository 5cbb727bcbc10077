package remote

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// With IdentitiesOnly yes, of the agent's keys only those of the identity files are
// offered (a server counts every key offered against MaxAuthTries); the file may be just
// the public half beside a key kept in the agent.
func TestIdentitiesOnlyOffersTheAgentsKeysOfTheIdentityFiles(t *testing.T) {
	ring, pubs := agentHolding(t, 3)
	dir := t.TempDir()
	id := filepath.Join(dir, "deploy_key") // only deploy_key.pub is there
	if err := os.WriteFile(id+".pub", ssh.MarshalAuthorizedKey(pubs[1]), 0o644); err != nil {
		t.Fatal(err)
	}
	k := &keys{agent: ring.(agent.ExtendedAgent), agentOK: true}

	all, _ := k.signers(endpoint{identityFiles: []string{id}})
	if len(all) != 3 {
		t.Errorf("without IdentitiesOnly: %d keys offered, want the agent's 3", len(all))
	}
	only, _ := k.signers(endpoint{identityFiles: []string{id}, identitiesOnly: true})
	if len(only) != 1 || string(only[0].PublicKey().Marshal()) != string(pubs[1].Marshal()) {
		t.Errorf("with IdentitiesOnly: %d keys offered, want deploy_key's alone", len(only))
	}
}

// IdentityFile may name the public half itself (~/.ssh/key.pub), the private key held by
// an agent, as 1Password's agent setup suggests with IdentitiesOnly yes.
func TestIdentitiesOnlyWithAPublicKeyAsIdentityFile(t *testing.T) {
	ring, pubs := agentHolding(t, 2)
	id := filepath.Join(t.TempDir(), "op_key.pub") // no op_key, no op_key.pub.pub
	if err := os.WriteFile(id, ssh.MarshalAuthorizedKey(pubs[1]), 0o644); err != nil {
		t.Fatal(err)
	}
	k := &keys{agent: ring.(agent.ExtendedAgent), agentOK: true}
	only, locked := k.signers(endpoint{identityFiles: []string{id}, identitiesOnly: true})
	if len(only) != 1 || string(only[0].PublicKey().Marshal()) != string(pubs[1].Marshal()) {
		t.Errorf("with IdentitiesOnly: %d keys offered, want op_key.pub's alone", len(only))
	}
	if len(locked) != 0 {
		t.Errorf("locked = %v; want none (a public key is no locked key)", locked)
	}
}

// skAgent is an agent holding a security key: x/crypto's keyring takes no sk key, so it
// hands out signers of its own.
type skAgent struct {
	agent.ExtendedAgent
	signers []ssh.Signer
}

func (a skAgent) Signers() ([]ssh.Signer, error) { return a.signers, nil }

type skSigner struct{ pub ssh.PublicKey }

func (s skSigner) PublicKey() ssh.PublicKey { return s.pub }
func (s skSigner) Sign(io.Reader, []byte) (*ssh.Signature, error) {
	return nil, errors.New("a security key signs in the agent")
}

// With IdentitiesOnly yes and no IdentityFile, the agent's security key is offered when
// ~/.ssh/id_ed25519_sk.pub names it, as ssh's default identity files include the _sk ones;
// the sk private key file, which x/crypto cannot use, is skipped without a word.
func TestIdentitiesOnlyOffersTheAgentsSecurityKeyOfTheDefaultFiles(t *testing.T) {
	pk, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	skPub, err := ssh.ParsePublicKey(ssh.Marshal(struct {
		Type, Key, Application string
	}{ssh.KeyAlgoSKED25519, string(pk), "ssh:"}))
	if err != nil {
		t.Fatal(err)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	otherSigner, _ := ssh.NewSignerFromKey(other)

	o := writeConfig(t, "Host app\n  IdentitiesOnly yes\n")
	sk := filepath.Join(o.Home, ".ssh", "id_ed25519_sk")
	if err := os.WriteFile(sk, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nnot one x/crypto reads\n-----END OPENSSH PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sk+".pub", ssh.MarshalAuthorizedKey(skPub), 0o644); err != nil {
		t.Fatal(err)
	}
	hops := chainOf(t, o, "ssh://app")
	k := &keys{agent: skAgent{signers: []ssh.Signer{otherSigner, skSigner{skPub}}}, agentOK: true}
	only, locked := k.signers(hops[0])
	if len(only) != 1 || only[0].PublicKey().Type() != ssh.KeyAlgoSKED25519 {
		t.Errorf("%d keys offered; want the agent's security key alone", len(only))
	}
	if len(locked) != 0 {
		t.Errorf("locked = %v; want none", locked)
	}
}

// agentHolding is an agent holding n new ed25519 keys, and their public halves.
func agentHolding(t *testing.T, n int) (agent.Agent, []ssh.PublicKey) {
	t.Helper()
	ring := agent.NewKeyring()
	var pubs []ssh.PublicKey
	for range n {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if err := ring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
			t.Fatal(err)
		}
		s, _ := ssh.NewSignerFromKey(priv)
		pubs = append(pubs, s.PublicKey())
	}
	return ring, pubs
}
