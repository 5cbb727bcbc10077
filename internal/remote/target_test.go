package remote

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want Target
	}{
		{"ssh://deploy@server", Target{User: "deploy", Host: "server"}},
		{"ssh://deploy@server:2222", Target{User: "deploy", Host: "server", Port: 2222}},
		{"ssh://server", Target{Host: "server"}},
		{"ssh://prod/", Target{Host: "prod"}},
		{"ssh://root@10.0.0.5:22", Target{User: "root", Host: "10.0.0.5", Port: 22}},
		{"ssh://me@[2001:db8::1]:2200", Target{User: "me", Host: "2001:db8::1", Port: 2200}},
	}
	for _, c := range good {
		got, err := Parse(c.in)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if back, err := Parse(got.String()); err != nil || back != got {
			t.Errorf("Parse(%q.String() = %q) = %+v, %v", c.in, got.String(), back, err)
		}
	}
	bad := []struct{ in, says string }{
		{"", "empty"},
		{"server", "no scheme"},
		{"deploy@server:22", "no scheme"},
		{"tcp://server:2375", `scheme "tcp" is not ssh`},
		{"unix:///var/run/docker.sock", `scheme "unix" is not ssh`},
		{"ssh://server:0", `port "0"`},
		{"ssh://server:65536", `port "65536"`},
		{"ssh://server:ssh", "not a URL"},
		{"ssh://server:", "empty port"},
		{"ssh://", "no host"},
		{"ssh://deploy:secret@server", "no password"},
		{"ssh://server/srv/app", "only a user, a host and a port"},
		{"ssh://server?x=1", "only a user, a host and a port"},
		{"ssh://::1", "IPv6 address goes in brackets"}, // found by FuzzParse: it read host ":" port 1
		{"ssh://me@2001:db8::1:22", "IPv6 address goes in brackets"},
	}
	for _, c := range bad {
		_, err := Parse(c.in)
		if !errors.Is(err, ErrBadTarget) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("Parse(%q) = %v; want ErrBadTarget saying %q", c.in, err, c.says)
			continue
		}
		if !strings.Contains(err.Error(), "ssh://user@server") || strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q) = %v; want one line that shows the form to write", c.in, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"ssh://a@b:1", "ssh://[::1]:22", "ssh://b", "tcp://x", "ssh://a:b@c", "ssh://%zz", "ssh://::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrBadTarget) {
				t.Fatalf("Parse(%q) error %v is not ErrBadTarget", s, err)
			}
			return
		}
		if got.Host == "" || got.Port < 0 || got.Port > 65535 {
			t.Fatalf("Parse(%q) = %+v", s, got)
		}
		back, err := Parse(got.String())
		if err != nil || back != got {
			t.Fatalf("Parse(%q) = %+v, but its String %q parses to %+v, %v", s, got, got.String(), back, err)
		}
	})
}
