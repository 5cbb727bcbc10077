package deploy

import (
	"bytes"
	"context"
	"html/template"
	"time"
)

// Maintenance is what a service answers while it is in maintenance: 503
// with a page and Retry-After, to every request but the paths in Allow,
// which the app still answers (a front load balancer's health check).
type Maintenance struct {
	Service    string
	Message    string        // shown on the default page
	Page       string        // a whole HTML page of the user's; "" : the default page with Message
	RetryAfter time.Duration // Retry-After, rounded to seconds
	Allow      []string      // exact paths still sent to the app
}

// DefaultRetryAfter is the Retry-After a maintenance page gives by default.
const DefaultRetryAfter = 5 * time.Minute

// Maintainer is a proxy that can answer for a service with a maintenance
// page and take it away again, exactly: Caddy and handoff proxy.
type Maintainer interface {
	// MaintenanceOn answers for the service with m from now on (replacing
	// an earlier page); known are the upstreams of its releases, to find
	// its route.
	MaintenanceOn(ctx context.Context, m Maintenance, known []string) error
	// MaintenanceOff takes the page away; false: there was none.
	MaintenanceOff(ctx context.Context, service string) (bool, error)
}

var defaultPage = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Down for maintenance</title>
<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}h1{font-size:1.5rem}</style>
</head><body><h1>Down for maintenance</h1><p>{{.}}</p></body></html>
`))

// Body is the page's HTML.
func (m Maintenance) Body() string {
	if m.Page != "" {
		return m.Page
	}
	msg := m.Message
	if msg == "" {
		msg = "We are updating the site and will be back shortly."
	}
	var b bytes.Buffer
	_ = defaultPage.Execute(&b, msg)
	return b.String()
}

// RetryAfterSeconds is the Retry-After header's value.
func (m Maintenance) RetryAfterSeconds() int {
	if m.RetryAfter <= 0 {
		return int(DefaultRetryAfter.Seconds())
	}
	return max(1, int(m.RetryAfter.Round(time.Second).Seconds()))
}
