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
// keep-alive GET loop straight to an app, and through the proxy. It reports
// p50 and p99 latency besides ns/op; the difference of the two p50s is the
// hop's added latency (`make bench-proxy`).
func BenchmarkHop(b *testing.B) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello from the app\n")
	}))
	defer app.Close()

	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	listen := l.Addr().String()
	l.Close()
	if _, err := p.Put("web", listen, app.Listener.Addr().String()); err != nil {
		b.Fatal(err)
	}
	defer p.Delete("web")

	for _, c := range []struct{ name, url string }{{"direct", app.URL}, {"via-proxy", "http://" + listen}} {
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
