package deploy

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestOnly(t *testing.T) {
	r := Only("web-3", "127.0.0.1:40001")
	require.Equal(t, Route{{Release: "web-3", Endpoints: []string{"127.0.0.1:40001"}, Weight: 100}}, r)
	require.Equal(t, "web-3 (127.0.0.1:40001):100", r.String())
	require.Nil(t, Only("web-3"), "no endpoints: no route")
	require.Nil(t, Only("web-3", ""), "a container not published has no endpoint")
	require.Equal(t, "no route", Route(nil).String())
}

func TestRouteEndpoints(t *testing.T) {
	r := Route{
		{Release: "web-3", Endpoints: []string{"127.0.0.1:1", "127.0.0.1:2"}, Weight: 90},
		{Release: "web-4", Endpoints: []string{"127.0.0.1:3"}, Weight: 10},
		{Release: "web-2", Endpoints: []string{"127.0.0.1:4"}, Weight: 0},
	}
	require.Equal(t, []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"}, r.Endpoints())
	require.Equal(t, []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}, r.Serving(), "weight 0 gets no new requests")
	require.True(t, r.Has("localhost:4"), "as SameUpstream compares")
	require.False(t, r.Has("127.0.0.1:5"))
	require.Equal(t, "web-3 (127.0.0.1:1, 127.0.0.1:2):90, web-4 (127.0.0.1:3):10, web-2 (127.0.0.1:4):0", r.String())
}

func TestSame(t *testing.T) {
	for _, c := range []struct {
		name string
		a, b Route
		same bool
	}{
		{"names ignored", Only("web-3", "127.0.0.1:1"), Only("", "127.0.0.1:1"), true},
		{"loopback spellings", Only("web-3", "localhost:1"), Only("web-3", "127.0.0.1:1"), true},
		{"weights relative", Only("", "a:1"), Route{{Endpoints: []string{"a:1"}, Weight: 1}}, true},
		{"other endpoint", Only("", "127.0.0.1:1"), Only("", "127.0.0.1:2"), false},
		{"empty", nil, nil, true},
		{"empty and one", nil, Only("", "a:1"), false},
		{"grouping ignored", Route{{Release: "web-3", Endpoints: []string{"a:1", "a:2"}, Weight: 100}},
			Route{{Endpoints: []string{"a:1"}, Weight: 1}, {Endpoints: []string{"a:2"}, Weight: 1}}, true},
		{"canary by shares", Route{{Endpoints: []string{"a:1"}, Weight: 90}, {Endpoints: []string{"b:1"}, Weight: 10}},
			Route{{Endpoints: []string{"a:1"}, Weight: 9}, {Endpoints: []string{"b:1"}, Weight: 1}}, true},
		{"shares differ", Route{{Endpoints: []string{"a:1"}, Weight: 90}, {Endpoints: []string{"b:1"}, Weight: 10}},
			Route{{Endpoints: []string{"a:1"}, Weight: 50}, {Endpoints: []string{"b:1"}, Weight: 50}}, false},
		{"a release's weight split over its endpoints", Route{{Endpoints: []string{"a:1", "a:2"}, Weight: 90}, {Endpoints: []string{"b:1"}, Weight: 10}},
			Route{{Endpoints: []string{"a:1"}, Weight: 45}, {Endpoints: []string{"a:2"}, Weight: 45}, {Endpoints: []string{"b:1"}, Weight: 10}}, true},
		{"a draining endpoint counts", Route{{Endpoints: []string{"a:1"}, Weight: 100}, {Endpoints: []string{"b:1"}, Weight: 0}},
			Only("", "a:1"), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.same, Same(c.a, c.b))
			require.Equal(t, c.same, Same(c.b, c.a), "symmetric")
		})
	}
}
