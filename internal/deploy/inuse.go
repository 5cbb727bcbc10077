package deploy

import (
	"context"
	"fmt"
	"strings"
)

// unlessUsed undoes c (abandon) unless a route of the proxy points at it,
// or the proxy cannot say: a container is never stopped or removed under a
// proxy that may send it traffic.
func (d *Deployer) unlessUsed(ctx context.Context, rec *Record, c Container, undo func(context.Context, Container)) {
	if why := d.inUse(ctx, c); why != "" {
		d.note(rec, fmt.Sprintf("%s left running: %s", c.Name, why))
		return
	}
	undo(ctx, c)
}

// inUse says why c must not be stopped or removed, or "".
func (d *Deployer) inUse(ctx context.Context, c Container) string {
	if c.Upstream == "" || d.Proxy == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	routes, err := d.Proxy.PointsAt(ctx, c.Upstream)
	if err != nil {
		return fmt.Sprintf("cannot tell whether %s still points at %s (%v)", d.Proxy.Describe(), c.Upstream, err)
	}
	if len(routes) > 0 {
		return fmt.Sprintf("%s is still the upstream of %s", c.Upstream, strings.Join(routes, "; "))
	}
	return ""
}

// discard removes a new container that will never serve.
func (d *Deployer) discard(ctx context.Context, c Container) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := d.Runtime.Remove(ctx, c.ID); err != nil {
		d.Report.Note(fmt.Sprintf("could not remove %s: %v (remove it with `docker rm -f %s`)", c.Name, err, c.Name))
	}
}

func (d *Deployer) stopQuietly(svc Service) func(context.Context, Container) {
	return func(ctx context.Context, c Container) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout+svc.StopTimeout)
		defer cancel()
		if err := d.Runtime.Stop(ctx, c.ID, svc.StopTimeout); err != nil {
			d.Report.Note(fmt.Sprintf("could not stop %s: %v", c.Name, err))
		}
	}
}
