package remote

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, text string) Options {
	t.Helper()
	home := t.TempDir()
	p := filepath.Join(home, ".ssh", "config")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return Options{Home: home, SystemConfigPath: os.DevNull, LocalUser: "me", AgentSocket: "none"}.withDefaults()
}

func chainOf(t *testing.T, o Options, target string) []endpoint {
	t.Helper()
	cfg, err := loadSSHConfig(o.ConfigPath, o.SystemConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	hops, err := o.chain(cfg, tg)
	if err != nil {
		t.Fatal(err)
	}
	return hops
}

func TestResolveFromSSHConfig(t *testing.T) {
	o := writeConfig(t, `
Host prod
  HostName 10.0.0.5
  User deploy
  Port 2222
  IdentityFile ~/.ssh/prod_key
  UserKnownHostsFile ~/.ssh/prod_known_hosts
  ProxyJump bastion
  ServerAliveInterval 5
  ConnectTimeout 7

Host bastion
  HostName bastion.example.com
  User jump
  Port 2200

Host *.internal
  HostName %h.example.net
`)
	hops := chainOf(t, o, "ssh://prod")
	if len(hops) != 2 {
		t.Fatalf("hops = %+v; want bastion then prod", hops)
	}
	b, p := hops[0], hops[1]
	if b.addr() != "bastion.example.com:2200" || b.user != "jump" {
		t.Errorf("bastion = %s; want jump@bastion.example.com:2200", b)
	}
	if p.addr() != "10.0.0.5:2222" || p.user != "deploy" || p.alias != "prod" {
		t.Errorf("prod = %s; want deploy@10.0.0.5:2222 (prod)", p)
	}
	if want := []string{filepath.Join(o.Home, ".ssh", "prod_key")}; !reflect.DeepEqual(p.identityFiles, want) {
		t.Errorf("prod identity files = %v; want %v", p.identityFiles, want)
	}
	if want := filepath.Join(o.Home, ".ssh", "prod_known_hosts"); p.knownHosts[0] != want {
		t.Errorf("prod known hosts = %v; want %s first", p.knownHosts, want)
	}
	if p.keepAlive != 5*time.Second || p.timeout != 7*time.Second {
		t.Errorf("prod keepalive %s, timeout %s; want 5s, 7s", p.keepAlive, p.timeout)
	}
	// The bastion has no IdentityFile of its own: ssh's defaults.
	var want []string
	for _, name := range []string{"id_ed25519", "id_ed25519_sk", "id_ecdsa", "id_ecdsa_sk", "id_rsa"} {
		want = append(want, filepath.Join(o.Home, ".ssh", name))
	}
	if !reflect.DeepEqual(b.identityFiles, want) {
		t.Errorf("bastion identity files = %v; want %v", b.identityFiles, want)
	}
	if want := filepath.Join(o.Home, ".ssh", "known_hosts"); b.knownHosts[0] != want {
		t.Errorf("bastion known hosts = %v; want %s first", b.knownHosts, want)
	}

	// The address's own user and port win over the config's.
	hops = chainOf(t, o, "ssh://admin@prod:22")
	if p := hops[len(hops)-1]; p.addr() != "10.0.0.5:22" || p.user != "admin" {
		t.Errorf("ssh://admin@prod:22 = %s; want admin@10.0.0.5:22", p)
	}
	// A host the config does not name: the local user, port 22, no jump.
	hops = chainOf(t, o, "ssh://db.internal")
	if len(hops) != 1 || hops[0].addr() != "db.internal.example.net:22" || hops[0].user != "me" {
		t.Errorf("ssh://db.internal = %v; want me@db.internal.example.net:22 alone", hops)
	}
}

func TestProxyJumpList(t *testing.T) {
	o := writeConfig(t, "Host app\n  ProxyJump ops@one:2201,ssh://two:2202\n")
	hops := chainOf(t, o, "ssh://app")
	var got []string
	for _, h := range hops {
		got = append(got, h.user+"@"+h.addr())
	}
	if want := []string{"ops@one:2201", "me@two:2202", "me@app:22"}; !reflect.DeepEqual(got, want) {
		t.Errorf("hops = %v; want %v", got, want)
	}
}

func TestConfigErrors(t *testing.T) {
	for name, text := range map[string]string{
		"port":          "Host app\n  Port twenty\n",
		"jump":          "Host app\n  ProxyJump bastion:port\n",
		"jump loop":     "Host app\n  ProxyJump app\n",
		"proxy command": "Host app\n  ProxyCommand cloudflared access ssh --hostname %h\n",
	} {
		o := writeConfig(t, text)
		cfg, err := loadSSHConfig(o.ConfigPath, o.SystemConfigPath)
		if err == nil {
			_, err = o.chain(cfg, Target{Host: "app"})
		}
		if !errors.Is(err, ErrConfig) {
			t.Errorf("%s: error %v; want ErrConfig", name, err)
		}
	}
}

// ssh takes whichever of ProxyJump and ProxyCommand it meets first for a host, as one
// setting; none of either means direct.
func TestProxyJumpOrProxyCommandFirstWins(t *testing.T) {
	include := filepath.Join(t.TempDir(), "jump.conf")
	if err := os.WriteFile(include, []byte("ProxyJump bastion\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user, system string
		want               []string // hop aliases, first hop first; nil: refused
	}{
		{name: "jump before a proxy command for every host",
			user: "Host app\n ProxyJump bastion\nHost bastion\n ProxyCommand none\nHost *\n ProxyCommand corp-proxy\n",
			want: []string{"bastion", "app"}},
		{name: "proxy command none before a jump for every host",
			user: "Host app\n ProxyCommand none\nHost *\n ProxyJump j\n",
			want: []string{"app"}},
		{name: "jump none before a proxy command",
			user: "Host app\n ProxyJump none\nHost *\n ProxyCommand corp-proxy\n",
			want: []string{"app"}},
		{name: "jump for every host before proxy command none",
			user: "Host * !j\n ProxyJump j\nHost app\n ProxyCommand none\n",
			want: []string{"j", "app"}},
		{name: "proxy command before a jump",
			user: "Host *\n ProxyCommand corp-proxy\nHost app\n ProxyJump bastion\n"},
		{name: "the user's jump none before the system's proxy command",
			user: "Host app\n ProxyJump none\n", system: "Host *\n ProxyCommand corp-proxy\n",
			want: []string{"app"}},
		{name: "the system's proxy command",
			user: "Host app\n User deploy\n", system: "Host *\n ProxyCommand corp-proxy\n"},
		{name: "an included jump before a proxy command",
			user: "Host app\n Include " + include + "\nHost bastion\n ProxyCommand none\nHost *\n ProxyCommand corp-proxy\n",
			want: []string{"bastion", "app"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := writeConfig(t, tc.user)
			if tc.system != "" {
				o.SystemConfigPath = filepath.Join(t.TempDir(), "ssh_config")
				if err := os.WriteFile(o.SystemConfigPath, []byte(tc.system), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg, err := loadSSHConfig(o.ConfigPath, o.SystemConfigPath)
			if err != nil {
				t.Fatal(err)
			}
			hops, err := o.chain(cfg, Target{Host: "app"})
			if tc.want == nil {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("error %v, hops %v; want ErrConfig", err, hops)
				}
				if want := "use ProxyJump, or set ProxyCommand none for this host above the Host * block"; !strings.Contains(err.Error(), want) {
					t.Errorf("error %q; want it to say %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, h := range hops {
				got = append(got, h.alias)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("hops %v; want %v", got, tc.want)
			}
		})
	}
}

// A system ssh config handoff cannot read (Fedora's includes `Match final all`) is left
// out, and said so; the user's own is refused with its error.
func TestAnUnreadableSystemConfigIsLeftOut(t *testing.T) {
	o := writeConfig(t, "Host app\n  HostName 10.0.0.5\n")
	system := filepath.Join(t.TempDir(), "ssh_config")
	if err := os.WriteFile(system, []byte("Match final all\n  GSSAPIAuthentication yes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadSSHConfig(o.ConfigPath, system)
	if err != nil {
		t.Fatalf("system config with Match final: %v; want it left out", err)
	}
	if len(cfg.skipped) != 1 || !strings.Contains(cfg.skipped[0], system+" not read") {
		t.Errorf("skipped = %q; want the system file named", cfg.skipped)
	}
	if hops, err := o.chain(cfg, Target{Host: "app"}); err != nil || hops[0].hostname != "10.0.0.5" {
		t.Errorf("the user's config still applies: %v %v", hops, err)
	}
	if _, err := loadSSHConfig(system, os.DevNull); !errors.Is(err, ErrConfig) {
		t.Errorf("the user's own config unreadable: %v; want ErrConfig", err)
	}
}
