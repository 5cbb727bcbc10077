package proxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"
)

// BenchmarkHop measures what the extra hop costs one request: the same
// keep-alive GET loop straight to an app, through the proxy, and through
// the proxy to a named endpoint (tasks.api, one address: what named's
// bookkeeping per request adds). It reports p50 and p99 latency besides
// ns/op; the difference of the p50s is the hop's added latency
// (`make bench-proxy`).
func BenchmarkHop(b *testing.B) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello from the app\n")
	}))
	defer app.Close()
	res := newFakeResolver()
	port, _ := tasks(b, "127.0.0.1")
	res.set("tasks.api", "127.0.0.1")

	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Resolver: res})
	route := func(service, upstream string) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		listen := l.Addr().String()
		l.Close()
		if _, err := p.Put(service, listen, upstream); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Delete(service) })
		return "http://" + listen
	}
	viaProxy, viaName := route("web", app.Listener.Addr().String()), route("api", "tasks.api:"+port)

	for _, c := range []struct{ name, url string }{{"direct", app.URL}, {"via-proxy", viaProxy}, {"via-proxy-named", viaName}} {
		b.Run(c.name, func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				resp, err := client.Get(c.url + "/")
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
